"""`mdm apple push-cert load|show` and `mdm apple push-csr`, each run in a process of its own as an operator runs it."""

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlmodel import col, select

from mdm.actor import Role
from mdm.audit.models import AuditEvent
from mdm.channel.apple.models import AppleDevice
from mdm.devices.models import Device
from mdm.ids import new_id, utcnow
from tests.fake_apns import ApplePortal


@pytest.fixture(scope="module")
def portal() -> ApplePortal:
    return ApplePortal()


def mdm(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MDM_")},
        "MDM_DATA_DIR": str(settings.data_dir),
        "MDM_DATABASE_URL": settings.resolved_database_url,
        "COLUMNS": "200",
    }
    command = [sys.executable, "-m", "mdm", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def enrolled_apple_device(database, topic: str) -> str:
    device_id, now = new_id(), utcnow()
    with database.writing() as session:
        session.add(
            Device(
                id=device_id,
                serial=f"C{device_id[-12:].upper()}",
                platform="ipados",
                protocol="apple",
                category="school_shared",
                state="enrolled",
                created_at=now,
                updated_at=now,
            )
        )
        session.flush()
        session.add(
            AppleDevice(device_id=device_id, udid=f"U-{device_id}", topic=topic, push_token="ab" * 32, push_magic="m")
        )
    return device_id


def test_renewing_keeps_the_topic_and_every_device_and_another_topic_is_refused(
    client, auth, database, settings, portal, tmp_path
):
    cert, key, topic = portal.issue(tmp_path, stem="first", not_after=datetime.now(UTC) + timedelta(days=300))
    loaded = mdm(settings, "apple", "push-cert", "load", "--cert", cert, "--key", key)
    assert loaded.returncode == 0, loaded.stderr
    assert f"loaded: topic {topic}" in loaded.stdout
    device_id = enrolled_apple_device(database, topic)

    renewal, renewal_key, _ = portal.issue(tmp_path, stem="renewal", topic=topic)  # a new key, as a renewal may have
    renewed = mdm(settings, "apple", "push-cert", "load", "--cert", renewal, "--key", renewal_key)
    assert renewed.returncode == 0, renewed.stderr
    assert "renewed" in renewed.stdout
    shown = client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin)).json()
    assert (shown["topic"], shown["days_left"]) == (topic, 364)
    with database.reading() as session:
        device = session.get(AppleDevice, device_id)
        assert device is not None
        assert (device.topic, device.push_token, device.push_token_dead_at) == (topic, "ab" * 32, None)

    other, other_key, other_topic = portal.issue(tmp_path, stem="other")
    refused = mdm(settings, "apple", "push-cert", "load", "--cert", other, "--key", other_key)
    assert refused.returncode == 2
    message = " ".join(refused.stderr.split())
    assert "1 Apple device(s)" in message
    assert "enrol again" in message
    assert "--new-topic" in message
    assert client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin)).json()["topic"] == topic

    forced = mdm(settings, "apple", "push-cert", "load", "--cert", other, "--key", other_key, "--new-topic")
    assert forced.returncode == 0, forced.stderr
    assert "1 Apple device(s) enrolled under the old topic" in " ".join(forced.stderr.split())
    assert client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin)).json()["topic"] == other_topic
    with database.reading() as session:
        actions = session.exec(
            select(AuditEvent.action)
            .where(col(AuditEvent.action).startswith("apple.push_certificate"))
            .order_by(col(AuditEvent.seq))
        ).all()
    assert actions == [
        "apple.push_certificate.load",
        "apple.push_certificate.renew",
        "apple.push_certificate.new_topic",
    ]


def test_load_refuses_a_key_that_does_not_match_an_expired_certificate_and_one_that_is_not_for_push(
    client, auth, settings, portal, tmp_path
):
    cert, _key, _ = portal.issue(tmp_path, stem="a")
    _cert, other_key, _ = portal.issue(tmp_path, stem="b")
    expired, expired_key, _ = portal.issue(tmp_path, stem="old", not_after=datetime.now(UTC) - timedelta(days=1))
    plain, plain_key, _ = portal.issue(tmp_path, stem="plain", uid="")

    mismatched = mdm(settings, "apple", "push-cert", "load", "--cert", cert, "--key", other_key)
    too_old = mdm(settings, "apple", "push-cert", "load", "--cert", expired, "--key", expired_key)
    not_push = mdm(settings, "apple", "push-cert", "load", "--cert", plain, "--key", plain_key)

    assert mismatched.returncode == too_old.returncode == not_push.returncode == 2
    assert "does not belong to this certificate" in mismatched.stderr
    assert "expired" in too_old.stderr
    assert "not an APNs MDM push certificate" in " ".join(not_push.stderr.split())
    assert client.get("/api/v1/apple/push-certificate", headers=auth(Role.admin)).status_code == 404
    shown = mdm(settings, "apple", "push-cert", "show")
    assert shown.returncode == 1
    assert "no push certificate is loaded" in shown.stderr


def test_show_and_load_warn_within_30_days_of_expiry(settings, portal, tmp_path):
    cert, key, topic = portal.issue(tmp_path, not_after=datetime.now(UTC) + timedelta(days=12, hours=1))

    loaded = mdm(settings, "apple", "push-cert", "load", "--cert", cert, "--key", key)
    shown = mdm(settings, "apple", "push-cert", "show")

    assert loaded.returncode == shown.returncode == 0, loaded.stderr + shown.stderr
    assert "12 day(s) left" in " ".join(loaded.stderr.split())
    assert topic in shown.stdout
    assert "(12 day(s) left)" in shown.stdout
    assert "warning:" in shown.stderr
    assert "12 day(s) left" in " ".join(shown.stderr.split())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_push_csr_makes_a_private_key_and_a_request_openssl_accepts(settings, tmp_path):
    key, out = tmp_path / "push.key", tmp_path / "push.csr"

    made = mdm(settings, "apple", "push-csr", "--key", key, "--out", out, "--email", "it@school.example")

    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    verified = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", out], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    request = x509.load_pem_x509_csr(out.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert private.key_size == 2048  # type: ignore[union-attr]
    assert request.public_key() == private.public_key()

    again = mdm(settings, "apple", "push-csr", "--key", key, "--out", tmp_path / "again.csr")
    assert again.returncode == 0, again.stderr
    assert x509.load_pem_x509_csr((tmp_path / "again.csr").read_bytes()).public_key() == private.public_key()
    assert "made a new private key" not in again.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_push_csr_help_explains_the_whole_renewal_path(settings):
    shown = mdm(settings, "apple", "push-csr", "--help")
    text = " ".join(shown.stdout.split())
    for step in ("MDM vendor", "identity.apple.com", "Renew", "mdm apple push-cert load", "30 days"):
        assert step in text
