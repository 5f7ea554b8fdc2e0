"""People: created one at a time or upserted in bulk from an MIS export."""

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, delete, insert, update
from sqlmodel import Session, col, select

from mdm import desired_state
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.csv_import import (
    DEFAULT_MAX_ROWS,
    ImportResult,
    chunks,
    parse_csv,
    row_error_from_validation,
    validate_rows,
)
from mdm.database import refresh_statistics
from mdm.errors import Conflict, NotFound
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate
from mdm.people.models import Person, PersonCreate, PersonGroup, PersonKind, PersonPublic

CSV_REQUIRED = {"external_id", "kind", "display_name"}
CSV_OPTIONAL = {"groups", "date_of_birth"}
BULK_THRESHOLD = 1000  # rows written before the planner's statistics are refreshed
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def create_person(session: Session, data: PersonCreate, actor: Actor) -> PersonPublic:
    existing = find_by_external_id(session, data.external_id)
    if existing is not None:
        raise Conflict(f"A person with external_id {data.external_id!r} exists already.", existing_id=existing.id)
    now = utcnow()
    person = Person.model_validate(
        {**data.model_dump(exclude={"groups"}), "id": new_id(), "created_at": now, "updated_at": now}
    )
    session.add(person)
    session.flush()
    session.add_all(PersonGroup(person_id=person.id, group_name=g) for g in data.groups)
    record(session, actor, "person.create", "person", person.id, data.model_dump(mode="json"))
    return _public(person, data.groups)


def get_person(session: Session, person_id: str) -> PersonPublic:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound("person", person_id)
    return _public(person, groups_of(session, [person.id])[person.id])


def require_person(session: Session, person_id: str) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound("person", person_id)
    return person


def find_by_external_id(session: Session, external_id: str) -> Person | None:
    return session.exec(select(Person).where(Person.external_id == external_id)).first()


def ids_by_external_id(session: Session, external_ids: Iterable[str]) -> dict[str, str]:
    """external_id -> id for those that exist, in chunks so a 50,000-line file stays within bind limits."""
    found: dict[str, str] = {}
    for chunk in chunks(list(external_ids)):
        rows = session.exec(select(Person.external_id, Person.id).where(col(Person.external_id).in_(chunk)))
        found.update(dict(rows.all()))
    return found


def groups_of(session: Session, person_ids: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for chunk in chunks(person_ids):
        statement = (
            select(PersonGroup.person_id, PersonGroup.group_name)
            .where(col(PersonGroup.person_id).in_(chunk))
            .order_by(PersonGroup.person_id, PersonGroup.group_name)
        )
        for person_id, group_name in session.exec(statement):
            groups[person_id].append(group_name)
    return groups


def list_people(
    session: Session,
    page: PageParams,
    *,
    external_id: str | None = None,
    kind: PersonKind | None = None,
    group: str | None = None,
) -> Page[PersonPublic]:
    statement = select(Person)
    if external_id is not None:
        statement = statement.where(Person.external_id == external_id)
    if kind is not None:
        statement = statement.where(Person.kind == kind.value)
    if group is not None:
        members = select(PersonGroup.person_id).where(PersonGroup.group_name == group)
        statement = statement.where(col(Person.id).in_(members))
    return paginate(session, statement, Person.id, page, lambda people: _publics(session, people))


def _publics(session: Session, people: list[Person]) -> list[PersonPublic]:
    groups = groups_of(session, [p.id for p in people])  # the whole page's groups in one query
    return [_public(p, groups[p.id]) for p in people]


def _public(person: Person, groups: list[str]) -> PersonPublic:
    return PersonPublic.model_validate({**person.model_dump(), "groups": groups})


# --- CSV import -----------------------------------------------------------------------------------


def _check_csv_row(values: dict[str, str]) -> PersonCreate:
    groups = [g.strip() for g in values.get("groups", "").split(";") if g.strip()]
    try:
        return PersonCreate.model_validate(
            {
                "external_id": values["external_id"],
                "kind": values["kind"].lower(),
                "display_name": values["display_name"],
                "groups": groups,
                "date_of_birth": values.get("date_of_birth") or None,
            }
        )
    except ValidationError as exc:
        raise row_error_from_validation(exc) from exc


def import_people_csv(
    session: Session, data: bytes, actor: Actor, progress: Progress | None = None, max_rows: int = DEFAULT_MAX_ROWS
) -> ImportResult:
    """Upserts by external_id. Every line is validated first; one bad line and nothing is written."""
    parsed = parse_csv(data, CSV_REQUIRED, CSV_OPTIONAL, max_rows)
    total = len(parsed.rows)
    done = 0

    def validated(step: int) -> None:
        nonlocal done
        done += step
        if progress:
            progress("validating", done, total)

    rows = [row for _, row in validate_rows(parsed, _check_csv_row, lambda p: p.external_id, "external_id", validated)]
    outcome = upsert_people(session, rows, progress)
    summary = {
        "lines": total,
        "created": len(outcome.created),
        "updated": len(outcome.updated),
        "unchanged": outcome.unchanged,
        "created_external_ids": outcome.created,
        "updated_external_ids": outcome.updated,
    }
    record(session, actor, "person.import", "person", None, summary)
    # Groups decide scopes: people whose record changed may need other profiles and apps.
    desired_state.devices_changed(session, person_ids=outcome.updated_ids)
    return ImportResult(
        total=total,
        created=len(outcome.created),
        updated=len(outcome.updated),
        unchanged=outcome.unchanged,
        ignored_columns=parsed.ignored_columns,
    )


@dataclass
class UpsertOutcome:
    created: list[str] = field(default_factory=list)  # external ids
    updated: list[str] = field(default_factory=list)
    updated_ids: list[str] = field(default_factory=list)  # person ids, for reconciling their devices
    unchanged: int = 0


def upsert_people(session: Session, rows: list[PersonCreate], progress: Progress | None = None) -> UpsertOutcome:
    existing = _existing_people(session, [p.external_id for p in rows])
    now = utcnow()
    outcome = UpsertOutcome()
    new_people, changed_people, group_rows = [], [], []
    for person in rows:
        current = existing.get(person.external_id)
        if current is None:
            person_id = new_id()
            new_people.append(_person_row(person_id, person, now, created=True))
            outcome.created.append(person.external_id)
        elif _differs(current, person):
            person_id = current["id"]
            changed_people.append(_person_row(person_id, person, now, created=False))
            outcome.updated.append(person.external_id)
            outcome.updated_ids.append(person_id)
        else:
            outcome.unchanged += 1
            continue
        group_rows.extend({"person_id": person_id, "group_name": g} for g in person.groups)
    stale_group_owners = [row["id"] for row in changed_people]
    _write_people(session, new_people, changed_people, stale_group_owners, group_rows, progress)
    return outcome


def _person_row(person_id: str, person: PersonCreate, now: Any, *, created: bool) -> dict[str, Any]:
    row = {
        "id": person_id,
        "external_id": person.external_id,
        "kind": person.kind.value,
        "display_name": person.display_name,
        "date_of_birth": person.date_of_birth,
        "updated_at": now,
    }
    if created:
        row["created_at"] = now
    return row


def _existing_people(session: Session, external_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(external_ids):
        statement = select(Person.id, Person.external_id, Person.kind, Person.display_name, Person.date_of_birth)
        for row in session.exec(statement.where(col(Person.external_id).in_(chunk))):
            found[row.external_id] = {**row._asdict(), "groups": []}
    by_id = {row["id"]: row for row in found.values()}
    for person_id, groups in groups_of(session, list(by_id)).items():
        by_id[person_id]["groups"] = groups
    return found


def _differs(current: dict[str, Any], person: PersonCreate) -> bool:
    date_of_birth: date | None = current["date_of_birth"]
    return (
        current["kind"] != person.kind.value
        or current["display_name"] != person.display_name
        or date_of_birth != person.date_of_birth
        or sorted(current["groups"]) != sorted(person.groups)
    )


def _write_people(
    session: Session,
    new_people: list[dict[str, Any]],
    changed_people: list[dict[str, Any]],
    stale_group_owners: list[str],
    group_rows: list[dict[str, Any]],
    progress: Progress | None,
) -> None:
    """Executemany in batches: one round trip per thousand rows, not one per person."""
    person_table, group_table = Person.__table__, PersonGroup.__table__  # type: ignore[attr-defined]
    total = len(new_people) + len(changed_people)
    written = 0
    for batch in chunks(new_people):
        session.execute(insert(person_table), batch)
        written += len(batch)
        if progress:
            progress("writing", written, total)
    update_statement = (
        update(person_table)
        .where(person_table.c.id == bindparam("b_id"))
        .values(
            kind=bindparam("kind"),
            display_name=bindparam("display_name"),
            date_of_birth=bindparam("date_of_birth"),
            updated_at=bindparam("updated_at"),
        )
    )
    for batch in chunks(changed_people):
        session.execute(update_statement, [{**row, "b_id": row["id"]} for row in batch])
        written += len(batch)
        if progress:
            progress("writing", written, total)
    for chunk in chunks(stale_group_owners):
        session.execute(delete(group_table).where(group_table.c.person_id.in_(chunk)))
    for batch in chunks(group_rows, 5000):
        session.execute(insert(group_table), batch)
    if total > BULK_THRESHOLD:
        refresh_statistics(session, "person", "person_group")
