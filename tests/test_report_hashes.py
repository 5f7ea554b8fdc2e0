"""The check-in's memory of what a body's inventory hashes to: never a different answer, and bounded."""

import hashlib
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from mdm.channel.agent import checkin
from mdm.channel.agent.checkin import ReportHashes
from mdm.errors import Invalid
from mdm.inventory.service import whole_report_hash
from tests.pki import new_key
from tests.test_channel import INVENTORY, Device


def body(version: str) -> bytes:
    apps = [{"identifier": "org.school.maths", "version": version, "managed": True}]
    return json.dumps({"inventory": {"os_version": "17.5", "apps": apps}}).encode()


def test_a_body_seen_before_gives_the_same_hash_without_being_validated_again() -> None:
    reports = ReportHashes(capacity=10)
    first, first_hash = reports.read(body("1.0"))
    again, again_hash = reports.read(body("1.0"))
    assert first is not None
    assert first_hash == whole_report_hash(first)
    assert again is None
    assert again_hash == first_hash


def test_a_changed_body_is_validated_and_hashed_afresh() -> None:
    reports = ReportHashes(capacity=10)
    _, old = reports.read(body("1.0"))
    changed, new = reports.read(body("2.0"))
    assert changed is not None
    assert changed.apps[0].version == "2.0"
    assert new != old


def test_an_invalid_body_is_refused_every_time() -> None:
    reports = ReportHashes(capacity=10)
    bad = json.dumps({"inventory": {"apps": "not a list"}}).encode()
    for _ in range(2):
        with pytest.raises(Invalid):
            reports.read(bad)


def test_memory_is_bounded_and_a_forgotten_body_still_answers() -> None:
    reports = ReportHashes(capacity=3)
    hashes = [reports.read(body(f"1.{n}"))[1] for n in range(10)]
    assert len(reports._hashes) <= 3
    assert reports.read(body("1.0"))[1] == hashes[0]


def remembered(document: dict) -> bool:
    return hashlib.sha256(json.dumps(document).encode()).digest() in checkin._REPORTS._hashes


def test_only_a_device_that_proved_itself_and_may_talk_fills_the_memory(client, auth, database):
    """A stranger's forged check-in, or a revoked device's, is refused before its body is remembered."""
    device = Device(client, auth)
    forged = {"inventory": {**INVENTORY, "os_version": "99.1"}}
    assert device.post(f"/api/v1/devices/{device.id}/checkin", forged, key=new_key()).status_code == 401
    assert not remembered(forged)

    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE device_certificate SET revoked_at = :now"), {"now": datetime.now(UTC)})
    revoked = {"inventory": {**INVENTORY, "os_version": "99.2"}}
    assert device.post(f"/api/v1/devices/{device.id}/checkin", revoked).status_code == 403
    assert not remembered(revoked)
