"""Appending to and verifying the audit chain.

Each event's hash covers its own fields and the previous event's hash, so editing, deleting or
reordering any event breaks every link after it. `record` must run in the same transaction as the
change it describes: both commit or neither does.
"""

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Select, bindparam, insert, update
from sqlmodel import Session, select

from mdm.actor import Actor
from mdm.audit.models import GENESIS_HASH, AuditEvent, AuditEventPublic, AuditHead, AuditQuery, ChainReport
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate

HEAD_ID = 1


_HASHED_FIELDS = (
    "seq",
    "id",
    "occurred_at",
    "actor",
    "actor_role",
    "action",
    "object_type",
    "object_id",
    "summary",
    "request_id",
    "prev_hash",
)


def event_hash(event: AuditEvent) -> str:
    return _hash_of({name: getattr(event, name) for name in _HASHED_FIELDS})


def _hash_of(fields: dict[str, Any]) -> str:
    material = {**fields, "occurred_at": fields["occurred_at"].isoformat()}
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    summary: dict[str, Any] | None = None,
) -> None:
    record_each(session, actor, action, object_type, [(object_id, summary)])


def record_each(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    objects: Iterable[tuple[str | None, dict[str, Any] | None]],
) -> None:
    """One event per (object id, summary), in order, with the chain's head locked and written once.

    Bulk work (a year's leavers) records thousands of events in one transaction: one head read, one
    insert and one head update for all of them. Written as plain rows: every enrolment and admin action
    records an event, and building ORM objects for an append-only table cost more than the SQL.
    """
    # The caller's changes first, then the head: a transaction that already waits for a row this one
    # has written never holds the head at the same time (the lock order of the ORM's autoflush).
    session.flush()
    last_seq, last_hash = session.execute(_LOCK_HEAD).one()
    rows = []
    for object_id, summary in objects:
        row = _event_row(last_seq + 1, last_hash, actor, action, object_type, object_id, summary)
        rows.append(row)
        last_seq, last_hash = row["seq"], row["hash"]
    if rows:
        session.execute(insert(_event), rows)
        session.execute(_MOVE_HEAD, {"last_seq": last_seq, "last_hash": last_hash})


_event = AuditEvent.__table__  # type: ignore[attr-defined]
_head = AuditHead.__table__  # type: ignore[attr-defined]
_LOCK_HEAD = select(_head.c.last_seq, _head.c.last_hash).where(_head.c.id == HEAD_ID).with_for_update()
_MOVE_HEAD = (
    update(_head).where(_head.c.id == HEAD_ID).values(last_seq=bindparam("last_seq"), last_hash=bindparam("last_hash"))
)


def _event_row(
    seq: int,
    prev_hash: str,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    summary: dict[str, Any] | None,
) -> dict[str, Any]:
    fields = {
        "seq": seq,
        "id": new_id(),
        "occurred_at": utcnow(),
        "actor": actor.label,
        "actor_role": actor.role.value if actor.role else None,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "summary": _jsonable(summary or {}),
        "request_id": actor.request_id,
        "prev_hash": prev_hash,
    }
    return {**fields, "hash": _hash_of(fields)}


def _jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    # Round-trip now so the stored JSON and the hashed JSON are the same values (dates become strings).
    return json.loads(json.dumps(summary, default=str))


def verify_chain(session: Session, progress: Callable[[int], None] | None = None) -> ChainReport:
    """Walks the chain in order and reports the first broken link, streaming so memory stays flat."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    for event in _stream(session, select(AuditEvent).order_by(AuditEvent.seq)):
        problem = _link_problem(event, expected_seq, expected_prev)
        if problem:
            broken = min(event.seq, expected_seq)  # a gap breaks at the first missing event
            return ChainReport(ok=False, events_checked=checked, first_broken_seq=broken, problem=problem)
        expected_prev, expected_seq, checked = event.hash, event.seq + 1, checked + 1
        if progress and checked % 1000 == 0:
            progress(checked)
    head = session.get(AuditHead, HEAD_ID)
    if head is None or head.last_seq != expected_seq - 1 or head.last_hash != expected_prev:
        last = head.last_seq if head else "?"
        return ChainReport(
            ok=False,
            events_checked=checked,
            first_broken_seq=expected_seq,
            problem=f"the chain ends at event {expected_seq - 1} but its head records event {last}: "
            "the latest events were deleted",
        )
    return ChainReport(ok=True, events_checked=checked)


def _link_problem(event: AuditEvent, expected_seq: int, expected_prev: str) -> str | None:
    if event.seq != expected_seq:
        missing = (
            f"event {expected_seq} is"
            if event.seq == expected_seq + 1
            else f"events {expected_seq}-{event.seq - 1} are"
        )
        return f"{missing} missing: deleted from the log"
    if event.prev_hash != expected_prev:
        return f"event {event.seq} does not link to the event before it: the chain was rewritten"
    if event_hash(event) != event.hash:
        return f"event {event.seq} does not match its hash: it was edited after it was written"
    return None


def _stream(session: Session, statement: Select[Any]) -> Iterator[AuditEvent]:
    yield from session.exec(statement.execution_options(yield_per=1000))  # type: ignore[call-overload]


def list_events(session: Session, page: PageParams, query: AuditQuery) -> Page[AuditEventPublic]:
    """Newest first."""
    statement = select(AuditEvent)
    filters = {
        AuditEvent.actor: query.actor,
        AuditEvent.action: query.action,
        AuditEvent.object_type: query.object_type,
        AuditEvent.object_id: query.object_id,
    }
    for column, value in filters.items():
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(AuditEvent.occurred_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEvent.occurred_at < query.until)
    return paginate(
        session,
        statement,
        AuditEvent.seq,
        page,
        lambda rows: [AuditEventPublic.model_validate(e, from_attributes=True) for e in rows],
        descending=True,
    )
