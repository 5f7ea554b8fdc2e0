"""Signed webhooks: subscriptions, the transactional outbox, signed delivery to a real receiver, retries.

The receiver is a real HTTP server on a free loopback port, in a thread; it stops with its test.
Signatures are checked here with hmac directly, not with the service's own `sign`.
"""

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from fastapi import APIRouter, Response
from sqlalchemy import text

from mdm import ids
from mdm.actor import Role
from mdm.dependencies import WriteSession
from mdm.scheduler import run_slot
from mdm.sealing import Sealer
from mdm.settings import Settings
from mdm.webhooks import jobs, service
from mdm.webhooks.destinations import AllowList
from tests.live_server import free_port

SECRET = "test-secret-0123456789abcdef"
DAY = 24 * 3600
RECEIVER_LIFETIME_SECONDS = 120
ALLOWED_HOSTS = "127.0.0.1, hooks.example.org"  # MDM_WEBHOOK_ALLOWED_HOSTS


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: str

    def signed_with(self, secret: str) -> bool:
        timestamp = self.headers["x-mdm-webhook-timestamp"]
        expected = (
            "sha256=" + hmac.new(secret.encode(), f"{timestamp}.{self.body}".encode(), hashlib.sha256).hexdigest()
        )
        return hmac.compare_digest(self.headers["x-mdm-webhook-signature"], expected)


class Receiver:
    """What a webhook receiver saw, and how it answers: `answers` in order, then `default`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[Received] = []
        self.answers: list[int] = []
        self.default = 200
        self.hang_seconds = 0.0
        self.arrived = threading.Event()
        self.release = threading.Event()  # ends any hang at once when the test is over
        self.lock = threading.Lock()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # a sender that timed out has hung up: writing the late answer fails, as it should


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            with receiver.lock:
                receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.answers.pop(0) if receiver.answers else receiver.default
            receiver.arrived.set()
            if receiver.hang_seconds:
                receiver.release.wait(receiver.hang_seconds)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", receiver.url + "elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook/")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(RECEIVER_LIFETIME_SECONDS, server.shutdown)  # stops even if a test never returns
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield receiver
    finally:
        watchdog.cancel()
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers here are on loopback, and hooks.example.org is never resolved: the operator allows both."""
    return Settings(**{**settings.model_dump(), "webhook_allowed_hosts": ALLOWED_HOSTS})


@pytest.fixture
def allowed(settings: Settings) -> AllowList:
    return AllowList.from_settings(settings)


@pytest.fixture
def sealer(app):  # type: ignore[no-untyped-def]
    return app.state.sealer


def _create(client, auth, url: str, events: list[str], **extra) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/api/v1/webhooks", json={"url": url, "events": events, **extra}, headers=auth(Role.admin))
    assert response.status_code == 201, response.text
    return response.json()


def _emit(database, event_type: str, data: dict) -> str:  # type: ignore[no-untyped-def]
    with database.writing() as session:
        return service.emit(session, event_type, data)


def _deliveries(client, auth, webhook_id: str, **params) -> list[dict]:  # type: ignore[no-untyped-def]
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params=params, headers=auth(Role.auditor))
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- Subscriptions ---------------------------------------------------------------------------------


def test_a_generated_secret_is_shown_once_and_never_again(client, auth, database):
    created = _create(client, auth, "https://hooks.example.org/mdm", ["device.noncompliant", "device.compliant"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert created["events"] == ["device.compliant", "device.noncompliant"]
    reads = [
        client.get("/api/v1/webhooks", headers=auth(Role.admin)),
        client.get(f"/api/v1/webhooks/{created['id']}", headers=auth(Role.admin)),
        client.get("/api/v1/webhooks", headers=auth(Role.auditor)),
        client.get("/api/v1/audit", headers=auth(Role.admin)),
    ]
    for response in reads:
        assert response.status_code == 200
        assert secret not in response.text
        assert '"secret"' not in response.text
    assert reads[0].json()["items"][0]["url"] == "https://hooks.example.org/mdm"
    with database.read_engine.connect() as connection:
        stored = connection.execute(text("SELECT sealed_secret FROM webhook")).scalar_one()
    assert secret not in stored  # sealed, not stored in the clear


def test_a_given_secret_is_used_and_deleting_stops_the_webhook(client, auth, database, sealer, receiver, allowed):
    created = _create(client, auth, receiver.url, ["exit.completed"], secret=SECRET, description="MIS")
    assert created["secret"] == SECRET
    assert created["description"] == "MIS"
    _emit(database, "exit.completed", {"case_id": "c-1"})
    assert client.delete(f"/api/v1/webhooks/{created['id']}", headers=auth(Role.admin)).status_code == 204
    assert client.get(f"/api/v1/webhooks/{created['id']}", headers=auth(Role.admin)).status_code == 404
    assert client.get("/api/v1/webhooks", headers=auth(Role.admin)).json()["items"] == []
    assert client.delete(f"/api/v1/webhooks/{created['id']}", headers=auth(Role.admin)).status_code == 404
    _emit(database, "exit.completed", {"case_id": "c-2"})  # no subscriber any more
    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 0, retrying 0, gave up on 0"
    assert receiver.requests == []
    with database.read_engine.connect() as connection:
        rows = connection.execute(text("SELECT status FROM webhook_delivery")).scalars().all()
        sealed = connection.execute(text("SELECT sealed_secret FROM webhook")).scalar_one()
    assert rows == ["cancelled"]
    assert sealed is None  # the secret is destroyed with the webhook


@pytest.mark.parametrize(
    ("role", "status"), [(Role.admin, 201), (Role.technician, 403), (Role.auditor, 403), (Role.integration, 403)]
)
def test_only_admins_create_webhooks(client, auth, role, status):
    body = {"url": "https://hooks.example.org/x", "events": ["device.enrolled"]}
    assert client.post("/api/v1/webhooks", json=body, headers=auth(role)).status_code == status


def test_auditors_read_webhooks_and_their_deliveries_but_change_nothing(client, auth):
    created = _create(client, auth, "https://hooks.example.org/x", ["device.enrolled"])
    auditor = auth(Role.auditor)
    assert client.get("/api/v1/webhooks", headers=auditor).status_code == 200
    assert client.get(f"/api/v1/webhooks/{created['id']}/deliveries", headers=auditor).status_code == 200
    assert client.delete(f"/api/v1/webhooks/{created['id']}", headers=auditor).status_code == 403
    assert client.get("/api/v1/webhooks", headers=auth(Role.technician)).status_code == 403
    assert client.get("/api/v1/webhooks", headers=auth(Role.admin)).json()["items"][0]["id"] == created["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example.org/x", "events": ["device.enrolled"]}, "body.url"),
        ({"url": "not a url", "events": ["device.enrolled"]}, "body.url"),
        ({"url": "https://user:pw@hooks.example.org/x", "events": ["device.enrolled"]}, "body.url"),
        ({"url": "https://hooks.example.org/" + "x" * 2000, "events": ["device.enrolled"]}, "body.url"),
        ({"url": "https://hooks.example.org/x", "events": ["device.exploded"]}, "body.events.0"),
        ({"url": "https://hooks.example.org/x", "events": []}, "body.events"),
        ({"url": "https://hooks.example.org/x"}, "body.events"),
        ({"url": "https://hooks.example.org/x", "events": ["device.enrolled"], "secret": "short"}, "body.secret"),
    ],
)
def test_bad_input_is_422_problem_json_and_creates_nothing(client, auth, body, field):
    response = client.post("/api/v1/webhooks", json=body, headers=auth(Role.admin))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]
    assert client.get("/api/v1/webhooks", headers=auth(Role.admin)).json()["items"] == []


def test_unknown_webhooks_are_404(client, auth):
    missing = "0190a0a0-0000-7000-8000-000000000000"
    assert client.get(f"/api/v1/webhooks/{missing}", headers=auth(Role.admin)).status_code == 404
    assert client.get(f"/api/v1/webhooks/{missing}/deliveries", headers=auth(Role.admin)).status_code == 404
    assert client.delete(f"/api/v1/webhooks/{missing}", headers=auth(Role.admin)).status_code == 404


# --- Emitting and delivering -----------------------------------------------------------------------


def test_an_event_reaches_each_subscriber_signed(client, auth, database, sealer, receiver, allowed):
    first = _create(client, auth, receiver.url, ["device.noncompliant"], secret=SECRET)
    other_secret = "another-secret-0123456789"
    second = _create(
        client, auth, receiver.url + "second", ["device.noncompliant", "device.compliant"], secret=other_secret
    )
    before = int(time.time())
    data = {"device_id": "d-1", "failures": [{"rule": "passcode", "detail": "no passcode"}]}
    event_id = _emit(database, "device.noncompliant", data)
    _emit(database, "exit.completed", {"case_id": "c-1"})  # nobody subscribed: nothing queued

    report = jobs.deliver_due(database, sealer, allowed)

    assert str(report) == "delivered 2, retrying 0, gave up on 0"
    assert sorted(r.path for r in receiver.requests) == ["/hook/", "/hook/second"]
    for received in receiver.requests:
        # Each receiver's request verifies with its own webhook's secret, and only with that one.
        own, foreign = (SECRET, other_secret) if received.path == "/hook/" else (other_secret, SECRET)
        assert received.signed_with(own)
        assert not received.signed_with(foreign)
        assert before <= int(received.headers["x-mdm-webhook-timestamp"]) <= time.time() + 1
        assert received.headers["content-type"] == "application/json"
        assert received.headers["x-mdm-webhook-id"] == event_id
        event = json.loads(received.body)
        assert set(event) == {"id", "type", "occurred_at", "data"}
        assert event["id"] == event_id
        assert event["type"] == "device.noncompliant"
        assert event["data"] == data
        assert abs(_parse(event["occurred_at"]).timestamp() - time.time()) < 60

    for webhook in (first, second):
        [delivery] = _deliveries(client, auth, webhook["id"])
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == 1
        assert delivery["last_status_code"] == 200
        assert delivery["next_attempt_at"] is None
        assert delivery["event_id"] == event_id
    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 0, retrying 0, gave up on 0"  # sent once
    assert len(receiver.requests) == 2


def test_an_event_whose_transaction_rolls_back_is_never_sent(client, auth, database, sealer, receiver, allowed):
    webhook = _create(client, auth, receiver.url, ["device.quarantined"], secret=SECRET)

    class Refused(Exception):
        pass

    def failing_change() -> None:
        with database.writing() as session:
            service.emit(session, "device.quarantined", {"device_id": "d-1"})
            raise Refused  # the change failed after the emit

    with pytest.raises(Refused):
        failing_change()

    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 0, retrying 0, gave up on 0"
    assert receiver.requests == []
    assert _deliveries(client, auth, webhook["id"]) == []


def test_emit_refuses_an_unknown_event_type(database):
    with database.writing() as session, pytest.raises(ValueError, match=r"device\.exploded"):
        service.emit(session, "device.exploded", {})


def test_failures_are_retried_with_growing_delays(client, auth, database, sealer, receiver, allowed):
    webhook = _create(client, auth, receiver.url, ["compliance.run_completed"], secret=SECRET)
    event_id = _emit(database, "compliance.run_completed", {"run_id": "r-1", "non_compliant": 3})
    receiver.answers = [500, 503, 500]  # then 200

    [delivery] = _deliveries(client, auth, webhook["id"])
    now = _parse(delivery["next_attempt_at"])
    attempted_at, delays = [], []
    while True:
        assert str(jobs.deliver_due(database, sealer, allowed, now=now - timedelta(seconds=1))).startswith(
            "delivered 0, retrying 0"
        )
        jobs.deliver_due(database, sealer, allowed, now=now)
        attempted_at.append(now)
        [delivery] = _deliveries(client, auth, webhook["id"])
        if delivery["status"] != "pending":
            break
        assert delivery["last_status_code"] in (500, 503)
        assert delivery["last_error"] == f"HTTP {delivery['last_status_code']}"
        next_attempt = _parse(delivery["next_attempt_at"])
        delays.append((next_attempt - now).total_seconds())
        now = next_attempt

    assert delays == [30, 60, 120]
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 4
    assert delivery["last_status_code"] == 200
    assert delivery["last_error"] is None
    # The same event (same id, same body) every time, each signed afresh with its own timestamp.
    assert len({r.body for r in receiver.requests}) == 1
    assert {r.headers["x-mdm-webhook-id"] for r in receiver.requests} == {event_id}
    timestamps = [r.headers["x-mdm-webhook-timestamp"] for r in receiver.requests]
    assert timestamps == [str(int(moment.timestamp())) for moment in attempted_at]
    assert all(r.signed_with(SECRET) for r in receiver.requests)


def test_it_gives_up_24_hours_after_the_event(client, auth, database, sealer, receiver, allowed):
    webhook = _create(client, auth, receiver.url, ["exit.step_failed"], secret=SECRET)
    _emit(database, "exit.step_failed", {"case_id": "c-1", "step": "remove_mdm"})
    receiver.default = 500

    [delivery] = _deliveries(client, auth, webhook["id"])
    occurred = _parse(delivery["created_at"])
    now, attempted_at = occurred, []
    while delivery["status"] == "pending":
        now = _parse(delivery["next_attempt_at"])
        jobs.deliver_due(database, sealer, allowed, now=now)
        attempted_at.append(now)
        [delivery] = _deliveries(client, auth, webhook["id"])

    expected, elapsed, delay = [], 0, 30
    while elapsed + min(delay, 3600) < DAY:
        expected.append(min(delay, 3600))
        elapsed += expected[-1]
        delay *= 2
    expected.append(DAY - elapsed)  # the last retry lands on the deadline
    delays = [(b - a).total_seconds() for a, b in itertools.pairwise(attempted_at)]
    assert delays[:8] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert delays == expected
    assert attempted_at[-1] == occurred + timedelta(hours=24)
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == len(attempted_at) == len(receiver.requests) == 31
    assert delivery["next_attempt_at"] is None
    assert delivery["last_status_code"] == 500
    assert "gave up after 31 attempt(s), 24 hours after the event" in delivery["last_error"]
    assert (
        str(jobs.deliver_due(database, sealer, allowed, now=now + timedelta(days=2)))
        == "delivered 0, retrying 0, gave up on 0"
    )
    assert _deliveries(client, auth, webhook["id"], status="failed")[0]["id"] == delivery["id"]
    assert _deliveries(client, auth, webhook["id"], status="pending") == []


def test_a_hanging_receiver_delays_no_request_and_counts_as_a_failed_attempt(
    app, client, auth, database, sealer, receiver, allowed
):
    router = APIRouter()

    @router.post("/test/emitting-change", status_code=204)
    def emitting_change(session: WriteSession) -> Response:  # a request whose change emits an event
        service.emit(session, "device.enrolled", {"device_id": "d-2"})
        return Response(status_code=204)

    app.include_router(router)
    webhook = _create(client, auth, receiver.url, ["device.enrolled"], secret=SECRET)
    assert client.post("/test/emitting-change").status_code == 204
    receiver.hang_seconds = 10  # far longer than the sender waits

    sending = threading.Thread(target=jobs.deliver_due, args=(database, sealer, allowed), kwargs={"timeout": 2.0})
    started = time.monotonic()
    sending.start()
    assert receiver.arrived.wait(5), "the receiver never got the event"
    request_started = time.monotonic()
    assert client.post("/test/emitting-change").status_code == 204
    request_seconds = time.monotonic() - request_started
    still_sending = sending.is_alive()
    sending.join(timeout=15)
    send_seconds = time.monotonic() - started

    assert still_sending, "the request did not run while the receiver was hanging"
    assert request_seconds < 1.0, f"an emitting request took {request_seconds:.2f} s while a receiver hung"
    assert not sending.is_alive()
    # Two attempts of 2 s (the second event was due by the first's end): the sender's timeout ended
    # them, not the receiver, which would have held each for 10 s.
    assert 4.0 <= send_seconds < 9.0
    assert len(receiver.requests) == 2
    for delivery in _deliveries(client, auth, webhook["id"]):
        assert delivery["status"] == "pending"
        assert delivery["attempts"] == 1
        assert delivery["last_status_code"] is None
        assert delivery["last_error"] == "no answer within 2 s"
        # The retry waits 30 s from the attempt's end; last_attempt_at is its start, 2 s before.
        waited = _parse(delivery["next_attempt_at"]) - _parse(delivery["last_attempt_at"])
        assert timedelta(seconds=32) <= waited < timedelta(seconds=38)


def test_dead_receivers_and_redirects_are_failed_attempts(client, auth, database, sealer, receiver, allowed):
    dead = _create(client, auth, f"http://127.0.0.1:{free_port()}/gone", ["device.enrolled"], secret=SECRET)
    redirecting = _create(client, auth, receiver.url, ["device.enrolled"], secret=SECRET)
    receiver.answers = [302]
    _emit(database, "device.enrolled", {"device_id": "d-1"})

    assert str(jobs.deliver_due(database, sealer, allowed)) == "delivered 0, retrying 2, gave up on 0"

    [refused] = _deliveries(client, auth, dead["id"])
    assert refused["last_status_code"] is None
    assert refused["last_error"] == "connection failed"  # no socket error: the log is no port scanner
    [redirected] = _deliveries(client, auth, redirecting["id"])
    assert redirected["last_status_code"] == 302
    assert "redirects are not followed" in redirected["last_error"]
    assert len(receiver.requests) == 1  # the redirect's target was never requested


def test_two_senders_at_once_send_each_event_once(client, auth, database, sealer, receiver, allowed):
    _create(client, auth, receiver.url, ["device.compliant"], secret=SECRET)
    with database.writing() as session:
        event_ids = service.emit_many(session, [("device.compliant", {"device_id": f"d-{i}"}) for i in range(30)])
    barrier = threading.Barrier(2)

    def sender(_: int) -> jobs.DeliveryReport:
        barrier.wait()
        return jobs.deliver_due(database, sealer, allowed, batch_size=4)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(sender, range(2)))

    assert sum(report.delivered for report in reports) == 30
    assert sorted(r.headers["x-mdm-webhook-id"] for r in receiver.requests) == sorted(event_ids)


def test_the_delivery_log_is_paginated_newest_first(client, auth, database):
    webhook = _create(client, auth, "https://hooks.example.org/x", ["device.enrolled"])
    event_ids = [_emit(database, "device.enrolled", {"device_id": f"d-{i}"}) for i in range(3)]
    response = client.get(
        f"/api/v1/webhooks/{webhook['id']}/deliveries", params={"limit": 2}, headers=auth(Role.admin)
    ).json()
    assert [d["event_id"] for d in response["items"]] == event_ids[:0:-1]
    rest = client.get(
        f"/api/v1/webhooks/{webhook['id']}/deliveries",
        params={"limit": 2, "cursor": response["next_cursor"]},
        headers=auth(Role.admin),
    ).json()
    assert [d["event_id"] for d in rest["items"]] == event_ids[:1]
    assert rest["next_cursor"] is None
    assert [d["status"] for d in response["items"] + rest["items"]] == ["pending"] * 3


# --- The scheduled job -----------------------------------------------------------------------------


def test_the_job_runs_every_minute_and_delivers(client, auth, database, receiver, settings, allowed):
    spec, _prune = jobs.jobs(Sealer.load_or_create(settings.data_dir), allowed, settings.retention_days)
    assert (spec.name, spec.cron) == ("deliver-webhooks", "* * * * *")
    _create(client, auth, receiver.url, ["device.enrolled"], secret=SECRET)
    _emit(database, "device.enrolled", {"device_id": "d-1"})
    assert run_slot(database, spec, datetime.now(UTC).isoformat(timespec="minutes")) is True
    with database.read_engine.connect() as connection:
        status, detail = connection.execute(text("SELECT status, detail FROM job_run")).one()
    assert (status, detail) == ("completed", "delivered 1, retrying 0, gave up on 0")
    [received] = receiver.requests
    assert received.signed_with(SECRET)


def test_events_of_one_millisecond_are_listed_in_the_order_they_happened(client, auth, database, monkeypatch):
    webhook = _create(client, auth, "https://hooks.example.org/x", ["device.enrolled"])
    frozen_clock = SimpleNamespace(time_ns=lambda: 1_780_000_000_000_000_000)
    monkeypatch.setattr(ids, "time", frozen_clock)  # every id below is minted in the same millisecond
    event_ids = [_emit(database, "device.enrolled", {"device_id": f"d-{i}"}) for i in range(20)]
    monkeypatch.undo()
    listed = _deliveries(client, auth, webhook["id"], limit=50)
    assert [d["event_id"] for d in listed] == event_ids[::-1]
