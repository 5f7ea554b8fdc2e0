"""The MIS's leavers, in bulk: `external_id,leaving_date,reason`, all or nothing.

The file is read and every line checked by the shared CSV validation (mdm/csv_import.py), as the
people and devices imports are, so a bad line is reported the same way everywhere; then the cases are
opened together through the exit's flow, which starts those whose leaving date has come in batches.
"""

from dataclasses import dataclass
from datetime import date

from pydantic import Field as PydanticField
from sqlmodel import Session

from exit_process import flows, service
from exit_process.models import CaseStatus
from mdm.actor import Actor
from mdm.csv_import import DEFAULT_MAX_ROWS, ImportResult, RowError, parse_csv, validate_rows
from mdm.people import service as people

CSV_REQUIRED = {"external_id", "leaving_date"}
CSV_OPTIONAL = {"reason"}
DEFAULT_REASON = "left school"


class LeaversImportResult(ImportResult):
    """The import result every CSV import answers, with how many of the new cases wait for their date."""

    scheduled: int = PydanticField(description="Cases opened for a leaving date still to come.")
    started: int = PydanticField(description="Cases started at once: their leaving date is today or past.")


@dataclass(frozen=True)
class Leaver:
    external_id: str
    person_id: str
    leaving_date: date
    reason: str


def import_leavers_csv(
    session: Session, data: bytes, actor: Actor, timezone: str, max_rows: int = DEFAULT_MAX_ROWS
) -> LeaversImportResult:
    """Every line checked first; one bad line and no case is opened."""
    parsed = parse_csv(data, CSV_REQUIRED, CSV_OPTIONAL, max_rows)
    person_ids = people.ids_by_external_id(session, {values["external_id"] for _, values in parsed.rows})
    open_people = service.people_with_open_cases(session)
    checked = validate_rows(
        parsed,
        lambda values: _check_row(values, person_ids, open_people),
        lambda leaver: leaver.external_id,
        "external_id",
    )
    openings = [service.Opening(leaver.person_id, leaver.leaving_date, leaver.reason) for _, leaver in checked]
    cases = flows.open_new_cases(session, openings, actor, timezone)
    started = sum(1 for case in cases if case.status != CaseStatus.scheduled.value)
    return LeaversImportResult(
        total=len(cases),
        created=len(cases),
        updated=0,
        unchanged=0,
        scheduled=len(cases) - started,
        started=started,
        ignored_columns=parsed.ignored_columns,
    )


def _check_row(values: dict[str, str], person_ids: dict[str, str], open_people: set[str]) -> Leaver:
    """One line's first problem, as a RowError; the shared validation adds duplicates of external_id."""
    external_id = values["external_id"]
    if not external_id:
        raise RowError([("external_id", "missing")])
    if external_id not in person_ids:
        raise RowError([("external_id", f"no person {external_id}")])
    if person_ids[external_id] in open_people:
        raise RowError([("external_id", f"{external_id} already has an open exit case")])
    try:
        leaving = date.fromisoformat(values["leaving_date"])
    except ValueError:
        raise RowError([("leaving_date", "not a date (YYYY-MM-DD)")]) from None
    reason = values.get("reason", "")
    if len(reason) > 500:
        raise RowError([("reason", "longer than 500 characters")])
    return Leaver(external_id, person_ids[external_id], leaving, reason or DEFAULT_REASON)
