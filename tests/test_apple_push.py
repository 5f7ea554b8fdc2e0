"""Waking Apple devices through APNs, against a local HTTP/2 stand-in (tests/fake_apns.py); nothing reaches Apple."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from mdm.actor import Role, cli_actor
from mdm.channel import service as channel
from mdm.channel.apple import push_certificate, wakeups
from mdm.channel.apple.models import AppleDevice
from mdm.channel.apple.push import ApnsGateway
from mdm.commands import service as commands
from mdm.commands.intents import DeviceLock
from mdm.commands.models import Command
from mdm.devices.models import Device
from mdm.ids import new_id, utcnow
from mdm.settings import Settings
from tests.fake_apns import ApplePortal, FakeApns, Push

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def portal() -> ApplePortal:
    return ApplePortal()


@pytest.fixture
def apns(tmp_path, portal):
    with FakeApns(tmp_path, portal) as server:
        yield server


@pytest.fixture
def settings(tmp_path, database_url, apns) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        scheduler="off",
        apns_url=apns.url,
        apns_ca_file=apns.ca_file,
        webhook_allowed_hosts="hooks.school.test",
    )


@pytest.fixture
def gateway(settings, runtime):
    gateway = ApnsGateway.from_settings(settings, runtime.sealer)
    yield gateway
    gateway.close()


def load_certificate(runtime, portal, folder, *, not_after: datetime | None = None, topic: str | None = None) -> str:
    cert, key, topic = portal.issue(folder, not_after=not_after, topic=topic)
    files = push_certificate.read_files(cert.read_bytes(), key.read_bytes(), utcnow())
    with runtime.database.writing() as session:
        push_certificate.load(session, files, runtime.sealer, cli_actor())
    return topic


def apple_device(database, topic: str, *, token: str | None = None, commands_queued: int = 0, state="enrolled"):
    device_id, now = new_id(), utcnow()
    token = token or new_id().replace("-", "") * 2
    with database.writing() as session:
        session.add(
            Device(
                id=device_id,
                serial=f"F{device_id[-12:].upper()}",
                platform="ipados",
                protocol="apple",
                category="school_shared",
                state=state,
                created_at=now,
                updated_at=now,
            )
        )
        session.flush()
        session.add(
            AppleDevice(
                device_id=device_id,
                udid=f"UDID-{device_id}",
                topic=topic,
                push_token=token,
                push_magic=f"magic-{device_id}",
                token_updated_at=now,
            )
        )
        session.flush()
        for number in range(commands_queued):
            commands.queue_command(session, device_id, DeviceLock(message=f"lock {number}"), "test")
    return device_id, token


def apple_row(database, device_id: str) -> AppleDevice:
    with database.reading() as session:
        return session.exec(select(AppleDevice).where(AppleDevice.device_id == device_id)).one()


def statuses(database, device_id: str) -> list[str]:
    with database.reading() as session:
        return [c.status for c in session.exec(select(Command).where(Command.device_id == device_id))]


# --- What a push looks like ------------------------------------------------------------------------


def test_a_push_goes_to_the_devices_token_with_the_topic_and_its_push_magic(
    client, auth, runtime, portal, apns, tmp_path
):
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, token = apple_device(runtime.database, topic)

    response = client.post(f"/api/v1/devices/{device_id}/push", headers=auth(Role.technician))

    assert response.status_code == 202, response.text
    [push] = apns.pushes
    assert push.path == f"/3/device/{token}"
    assert push.headers[":method"] == "POST"
    assert push.headers["apns-topic"] == topic
    assert push.headers["apns-push-type"] == "mdm"
    assert json.loads(push.body) == {"mdm": f"magic-{device_id}"}
    assert push.client_uid == topic  # the school's certificate was the TLS client certificate
    assert apple_row(runtime.database, device_id).last_push_at is not None


def test_the_gateways_certificate_is_verified(client, auth, runtime, portal, apns, tmp_path, app):
    """A gateway whose certificate the service does not trust is never sent a push (no MDM_APNS_CA_FILE)."""
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, _ = apple_device(runtime.database, topic)
    app.state.apns = ApnsGateway(apns.url, runtime.sealer, ca_file=None)

    response = client.post(f"/api/v1/devices/{device_id}/push", headers=auth(Role.admin))

    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert "could not be reached" in response.json()["detail"]
    assert apns.pushes == []


# --- Coalescing ------------------------------------------------------------------------------------


def test_ten_queued_commands_make_one_push_per_interval(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    busy, _ = apple_device(runtime.database, topic, commands_queued=10)
    idle, _ = apple_device(runtime.database, topic)  # nothing due: never woken

    first = wakeups.push_due(runtime.database, gateway, settings)
    second = wakeups.push_due(runtime.database, gateway, settings)

    assert (first.pushed, second.pushed) == (1, 0)
    assert [push.path for push in apns.pushes] == [f"/3/device/{apple_row(runtime.database, busy).push_token}"]
    assert apple_row(runtime.database, idle).last_push_at is None

    with runtime.database.writing() as session:  # the interval passes
        row = session.get(AppleDevice, busy)
        assert row is not None
        row.last_push_at = utcnow() - timedelta(seconds=settings.apns_push_interval_seconds + 1)
        session.add(row)
    assert wakeups.push_due(runtime.database, gateway, settings).pushed == 1
    assert len(apns.pushes) == 2
    assert statuses(runtime.database, busy) == ["queued"] * 10  # a push delivers nothing by itself


def test_devices_without_a_live_token_or_due_commands_are_not_woken(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    apple_device(runtime.database, "com.apple.mgmt.External.another-topic", commands_queued=1)
    apple_device(runtime.database, topic, commands_queued=1, state="retired")
    waiting, _ = apple_device(runtime.database, topic, commands_queued=1)
    with runtime.database.writing() as session:  # its only command waits (NotNow) for a minute more
        [command] = commands.open_commands(session, waiting)
        command.status, command.not_before = "not_now", utcnow() + timedelta(minutes=1)
        session.add(command)

    assert wakeups.push_due(runtime.database, gateway, settings).pushed == 0
    assert apns.pushes == []


def test_no_push_certificate_means_no_push_and_nothing_changes(runtime, gateway, settings, apns):
    device_id, _ = apple_device(runtime.database, "com.apple.mgmt.External.x", commands_queued=1)

    run = wakeups.push_due(runtime.database, gateway, settings)

    assert run.pushed == 0
    assert "no push certificate" in run.summary()
    assert apns.pushes == []
    assert statuses(runtime.database, device_id) == ["queued"]


# --- APNs' refusals --------------------------------------------------------------------------------


def test_410_marks_the_token_dead_and_stops_pushes(client, auth, runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, _ = apple_device(runtime.database, topic, commands_queued=2)
    apns.answer = lambda _push: (410, {"content-type": "application/json"}, b'{"reason":"Unregistered"}')

    run = wakeups.push_due(runtime.database, gateway, settings)

    assert (run.pushed, run.dead) == (0, 1)
    assert apple_row(runtime.database, device_id).push_token_dead_at is not None
    assert wakeups.push_due(runtime.database, gateway, settings).dead == 0
    assert len(apns.pushes) == 1
    response = client.post(f"/api/v1/devices/{device_id}/push", headers=auth(Role.technician))
    assert response.status_code == 409
    assert "TokenUpdate" in response.json()["detail"]
    assert len(apns.pushes) == 1
    assert statuses(runtime.database, device_id) == ["queued", "queued"]


def test_400_bad_device_token_is_a_dead_token_too(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, _ = apple_device(runtime.database, topic, commands_queued=1)
    apns.answer = lambda _push: (400, {}, b'{"reason":"BadDeviceToken"}')

    assert wakeups.push_due(runtime.database, gateway, settings).dead == 1
    assert apple_row(runtime.database, device_id).push_token_dead_at is not None


def test_429_backs_off_and_the_command_is_delivered_later(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, _ = apple_device(runtime.database, topic, commands_queued=1)
    answers = iter([(429, {"retry-after": "1"}, b'{"reason":"TooManyRequests"}')])
    apns.answer = lambda _push: next(answers, (200, {}, b""))

    throttled = wakeups.push_due(runtime.database, gateway, settings)
    at_once = wakeups.push_due(runtime.database, gateway, settings)  # within Retry-After: APNs is not asked

    assert (throttled.pushed, throttled.waiting, at_once.pushed, at_once.waiting) == (0, 1, 0, 1)
    assert len(apns.pushes) == 1
    assert statuses(runtime.database, device_id) == ["queued"]
    assert apple_row(runtime.database, device_id).push_token_dead_at is None

    time.sleep(1.1)
    assert wakeups.push_due(runtime.database, gateway, settings).pushed == 1
    assert len(apns.pushes) == 2
    with runtime.database.writing() as session:  # the device, woken, connects and collects it
        delivered = channel.next_commands(session, device_id, utcnow(), timedelta(minutes=15), limit=1)
    assert [command.type for command, _intent in delivered] == ["DeviceLock"]


def test_a_failing_gateway_makes_the_replica_wait_without_touching_commands(
    client, auth, runtime, portal, apns, gateway, settings, tmp_path, app
):
    topic = load_certificate(runtime, portal, tmp_path)
    first, _ = apple_device(runtime.database, topic, commands_queued=1)
    second, _ = apple_device(runtime.database, topic, commands_queued=1)
    apns.answer = lambda _push: (503, {}, b'{"reason":"ServiceUnavailable"}')

    run = wakeups.push_due(runtime.database, gateway, settings)

    assert (run.pushed, run.waiting) == (0, 2)
    assert len(apns.pushes) == 1  # the second device was not sent into a failing gateway
    assert statuses(runtime.database, first) == statuses(runtime.database, second) == ["queued"]
    app.state.apns = gateway
    response = client.post(f"/api/v1/devices/{first}/push", headers=auth(Role.technician))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert len(apns.pushes) == 1


def test_one_devices_failure_does_not_stop_the_others(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    dead, dead_token = apple_device(runtime.database, topic, commands_queued=1)
    alive, _ = apple_device(runtime.database, topic, commands_queued=1)

    def answer(push: Push) -> tuple[int, dict[str, str], bytes]:
        return (410, {}, b'{"reason":"Unregistered"}') if push.path.endswith(dead_token) else (200, {}, b"")

    apns.answer = answer
    run = wakeups.push_due(runtime.database, gateway, settings)

    assert (run.pushed, run.dead) == (1, 1)
    assert apple_row(runtime.database, alive).last_push_at is not None
    assert apple_row(runtime.database, dead).push_token_dead_at is not None


# --- POST /api/v1/devices/{id}/push refusals -------------------------------------------------------


def test_waking_a_device_that_cannot_be_woken_is_refused(client, auth, runtime, portal, apns, tmp_path):
    headers = auth(Role.technician)
    apple, _ = apple_device(runtime.database, "com.apple.mgmt.External.not-loaded-yet")

    no_certificate = client.post(f"/api/v1/devices/{apple}/push", headers=headers)
    assert no_certificate.status_code == 503
    assert no_certificate.headers["content-type"] == PROBLEM
    assert "push-cert load" in no_certificate.json()["detail"]

    topic = load_certificate(runtime, portal, tmp_path)
    unknown = client.post("/api/v1/devices/no-such-device/push", headers=headers)
    assert unknown.status_code == 404
    other_topic = client.post(f"/api/v1/devices/{apple}/push", headers=headers)
    assert other_topic.status_code == 409
    agent = client.post(
        "/api/v1/devices",
        json={"serial": "AGENT1", "platform": "windows", "category": "school_shared"},
        headers=headers,
    ).json()
    not_apple = client.post(f"/api/v1/devices/{agent['id']}/push", headers=headers)
    assert not_apple.status_code == 409
    assert "Apple" in not_apple.json()["detail"]
    assert client.post(f"/api/v1/devices/{apple}/push", headers=auth(Role.auditor)).status_code == 403
    assert apns.pushes == []
    assert topic


# --- The certificate over the API, its expiry ------------------------------------------------------


def test_get_push_certificate_is_404_until_one_is_loaded(client, auth, runtime, portal, tmp_path):
    missing = client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM

    topic = load_certificate(runtime, portal, tmp_path, not_after=datetime.now(UTC) + timedelta(days=200, hours=1))

    for role in (Role.admin, Role.auditor):
        body = client.get("/api/v1/apple/push-certificate", headers=auth(role)).json()
        assert body["topic"] == topic
        assert body["days_left"] == 200
        assert body["warning"] is None
    assert client.get("/api/v1/apple/push-certificate", headers=auth(Role.technician)).status_code == 403


def test_readyz_and_the_api_warn_within_30_days_of_expiry(client, auth, runtime, portal, tmp_path):
    assert "warnings" not in client.get("/readyz").json()
    topic = load_certificate(runtime, portal, tmp_path, not_after=datetime.now(UTC) + timedelta(days=31, hours=1))
    assert "warnings" not in client.get("/readyz").json()

    load_certificate(runtime, portal, tmp_path, not_after=datetime.now(UTC) + timedelta(days=20, hours=1), topic=topic)

    ready = client.get("/readyz")
    assert ready.status_code == 200
    [warning] = ready.json()["warnings"]
    assert "20 day(s) left" in warning
    assert "push certificate" in warning
    certificate = client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin)).json()
    assert certificate["days_left"] == 20
    assert certificate["warning"] == warning


def test_the_daily_check_warns_webhook_subscribers_within_30_days(client, auth, runtime, portal, tmp_path):
    from mdm.webhooks.models import WebhookDelivery

    created = client.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.school.test/hook", "events": ["apple.push_certificate_expiring"]},
        headers=auth(Role.admin),
    )
    assert created.status_code == 201, created.text
    topic = load_certificate(runtime, portal, tmp_path, not_after=datetime.now(UTC) + timedelta(days=90, hours=1))
    assert "90 day(s) left" in wakeups.warn_of_expiry(runtime.database)

    load_certificate(runtime, portal, tmp_path, not_after=datetime.now(UTC) + timedelta(days=10, hours=1), topic=topic)
    wakeups.warn_of_expiry(runtime.database)

    with runtime.database.reading() as session:
        [delivery] = session.exec(select(WebhookDelivery)).all()
    event = json.loads(delivery.body)
    assert event["type"] == "apple.push_certificate_expiring"
    assert event["data"]["days_left"] == 10


def test_the_minutely_job_pushes_through_the_replicas_gateway(runtime, portal, apns, settings, tmp_path):
    from mdm.app import create_app
    from mdm.scheduler import run_slot
    from mdm.scheduler_models import JobRun

    topic = load_certificate(runtime, portal, tmp_path)
    apple_device(runtime.database, topic, commands_queued=3)
    app = create_app(settings.model_copy(update={"scheduler": "on"}), runtime.database)
    spec = app.state.scheduler.specs["apple-push"]
    assert spec.cron == "* * * * *"

    assert run_slot(runtime.database, spec, "2026-01-05T09:01:00+00:00")
    assert not run_slot(runtime.database, spec, "2026-01-05T09:01:00+00:00")  # the slot is taken: one run

    assert len(apns.pushes) == 1
    with runtime.database.reading() as session:
        [run] = session.exec(select(JobRun).where(JobRun.job == "apple-push")).all()
    assert (run.status, run.detail) == ("completed", "pushed 1, dead tokens 0, waiting 0, refused 0")
    app.state.apns.close()


def test_a_token_that_is_not_hex_never_reaches_the_gateway(runtime, portal, apns, gateway, settings, tmp_path):
    topic = load_certificate(runtime, portal, tmp_path)
    device_id, _ = apple_device(runtime.database, topic, token="ab" * 16 + "/../../3/other", commands_queued=1)

    assert wakeups.push_due(runtime.database, gateway, settings).dead == 1
    assert apns.pushes == []
    assert apple_row(runtime.database, device_id).push_token_dead_at is not None
