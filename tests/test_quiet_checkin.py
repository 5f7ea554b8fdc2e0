"""The quiet check-in: a converged device's check-in is decided by a read, then one conditional UPDATE.

Whatever changes between that read and the write (a revocation, a retirement, a queued command) must
be seen by the write: each test here makes the change at exactly that moment, after the read and
before the write transaction, and checks the device gets what the full path gives.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from mdm.channel import service as channel
from mdm.commands import service as commands
from mdm.commands.intents import DeviceLock
from tests.pki import signed_headers
from tests.test_channel import INVENTORY, Device


def converged(client, auth) -> Device:
    device = Device(client, auth)
    assert device.checkin().status_code == 200  # the report is stored: the next identical one is quiet
    return device


def between_read_and_write(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Runs `change` (in its own committed transaction) once, right after a connect's first read, agent or Apple.

    Only the first: Apple's full path reads the same way again inside its write transaction.
    """
    pending = [change]
    for name in ("read_device", "read_device_of_certificate"):
        monkeypatch.setattr(channel, name, _then(getattr(channel, name), pending))


def _then(read: Callable[..., Any], pending: list[Callable[[], None]]) -> Callable[..., Any]:
    def read_then_change(*args: Any) -> Any:
        seen = read(*args)
        while pending:
            pending.pop()()
        return seen

    return read_then_change


def execute(database, statement: str, **values) -> None:  # type: ignore[no-untyped-def]
    with database.write_engine.begin() as connection:
        connection.execute(text(statement), values)


def last_checkin(database, device_id: str) -> datetime:  # type: ignore[no-untyped-def]
    with database.writing() as session:
        return session.execute(text("SELECT last_checkin_at FROM device WHERE id = :id"), {"id": device_id}).scalar()


def nonces(database, device_id: str) -> int:  # type: ignore[no-untyped-def]
    with database.write_engine.connect() as connection:
        query = text("SELECT count(*) FROM device_nonce WHERE device_id = :id")
        return int(connection.execute(query, {"id": device_id}).scalar_one())


def test_a_quiet_checkin_is_recorded_and_answers_no_commands(client, auth, database):
    device = converged(client, auth)
    before = last_checkin(database, device.id)
    response = device.checkin()
    assert response.status_code == 200
    assert response.json() == {"commands": [], "next_checkin_seconds": 14400}
    assert last_checkin(database, device.id) != before


def test_a_revocation_between_the_read_and_the_write_is_403(client, auth, database, monkeypatch):
    device = converged(client, auth)
    revoke = "UPDATE device_certificate SET revoked_at = :now WHERE device_id = :id"
    between_read_and_write(monkeypatch, lambda: execute(database, revoke, id=device.id, now=datetime.now(UTC)))
    response = device.checkin()
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_a_retirement_between_the_read_and_the_write_is_403(client, auth, database, monkeypatch):
    device = converged(client, auth)
    between_read_and_write(
        monkeypatch, lambda: execute(database, "UPDATE device SET state = 'retired' WHERE id = :id", id=device.id)
    )
    response = device.checkin()
    assert response.status_code == 403
    assert "retired" in response.json()["detail"]


def test_a_command_queued_between_the_read_and_the_write_is_delivered_at_once(client, auth, database, monkeypatch):
    device = converged(client, auth)
    queued: list[str] = []

    def queue_lock() -> None:
        with database.writing() as session:
            queued.append(commands.queue_command(session, device.id, DeviceLock(message="Return to IT"), "test").id)

    between_read_and_write(monkeypatch, queue_lock)
    response = device.checkin()
    assert response.status_code == 200
    assert [command["id"] for command in response.json()["commands"]] == queued


def test_a_refused_quiet_checkin_writes_nothing(client, auth, database):
    """403 is decided by the read: the nonce is not used up and the last check-in stays as it was."""
    device = converged(client, auth)
    before, nonces_before = last_checkin(database, device.id), nonces(database, device.id)
    execute(database, "UPDATE device SET state = 'retired' WHERE id = :id", id=device.id)
    path = f"/api/v1/devices/{device.id}/checkin"
    body = json.dumps({"inventory": INVENTORY}).encode()
    response = client.post(path, content=body, headers=signed_headers(device.key, "POST", path, body))
    assert response.status_code == 403
    assert last_checkin(database, device.id) == before
    assert nonces(database, device.id) == nonces_before


def test_an_apple_idle_connect_is_quiet_until_a_revocation_lands_between_the_read_and_the_write(
    client, auth, runtime, database, monkeypatch
):
    from tests.test_apple_channel import _answer_queries, _enrolled

    ipad, device = _enrolled(client, auth, runtime)
    _answer_queries(ipad, {})  # the inventory queries TokenUpdate queued: now nothing waits
    before = last_checkin(database, device["id"])
    idle = ipad.connect()
    assert (idle.status_code, idle.content) == (200, b"")
    assert last_checkin(database, device["id"]) != before
    revoke = "UPDATE device_certificate SET revoked_at = :now WHERE device_id = :id"
    between_read_and_write(monkeypatch, lambda: execute(database, revoke, id=device["id"], now=datetime.now(UTC)))
    refused = ipad.connect()
    assert refused.status_code == 403
    assert "revoked" in refused.json()["detail"]
