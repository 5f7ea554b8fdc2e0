"""The check-in's memory of what a body's inventory hashes to: never a different answer, and bounded."""

import json

import pytest

from mdm.channel.agent.checkin import ReportHashes
from mdm.errors import Invalid
from mdm.inventory.service import whole_report_hash


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
