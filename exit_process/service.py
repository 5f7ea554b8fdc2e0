"""Leaver cases as stored: get, create, list, update, and how a case reads in the API.

The step engine that moves a case on lives in exit_process/flows.py; the MIS's CSV in
exit_process/leavers.py. This module touches only the exit's own tables, so both can share it.
"""

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from exit_process.models import (
    FINISHED_STEPS,
    CaseStatus,
    ExitCase,
    ExitCasePublic,
    ExitDevice,
    ExitDevicePublic,
    ExitStep,
    StepPublic,
)
from mdm.actor import Actor
from mdm.audit.service import record, record_each
from mdm.errors import Conflict, NotFound
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate

OPEN_STATUSES = (CaseStatus.scheduled.value, CaseStatus.in_progress.value)
OVERDUE_AFTER = timedelta(days=14)


def today(timezone: str) -> date:
    return datetime.now(ZoneInfo(timezone)).date()


def get_case(session: Session, case_id: str) -> ExitCase:
    case = session.get(ExitCase, case_id)
    if case is None:
        raise NotFound("exit case", case_id)
    return case


@dataclass(frozen=True)
class Opening:
    """A case to open: who leaves, when, and why."""

    person_id: str
    leaving_date: date
    reason: str


def create_cases(session: Session, openings: Sequence[Opening], actor: Actor) -> list[ExitCase]:
    """Scheduled cases, stored and audited together; a second open case for anyone is a 409, even from a race."""
    now = utcnow()
    cases = [
        ExitCase(
            id=new_id(),
            person_id=opening.person_id,
            status=CaseStatus.scheduled.value,
            reason=opening.reason,
            leaving_date=opening.leaving_date,
            created_at=now,
            created_by=actor.label,
            revoked_tokens=[],
        )
        for opening in openings
    ]
    try:
        with session.begin_nested():  # the unique index settles a race between two requests
            session.add_all(cases)
            session.flush()
    except IntegrityError:
        for opening in openings:
            refuse_second_case(session, opening.person_id)
        raise
    summaries = [
        (case.id, {"person_id": case.person_id, "leaving_date": case.leaving_date.isoformat(), "reason": case.reason})
        for case in cases
    ]
    record_each(session, actor, "exit.open", "exit_case", summaries)
    return cases


def refuse_second_case(session: Session, person_id: str) -> None:
    existing = session.exec(
        select(ExitCase).where(ExitCase.person_id == person_id, col(ExitCase.status).in_(OPEN_STATUSES))
    ).first()
    if existing is not None:
        raise Conflict(f"This person already has an open exit case ({existing.status}).", existing_id=existing.id)


def people_with_open_cases(session: Session) -> set[str]:
    return set(session.exec(select(ExitCase.person_id).where(col(ExitCase.status).in_(OPEN_STATUSES))))


def cases_in(session: Session, status: CaseStatus) -> list[ExitCase]:
    return list(session.exec(select(ExitCase).where(ExitCase.status == status.value)))


def due_cases(session: Session, on: date) -> list[ExitCase]:
    """Scheduled cases whose leaving date has come."""
    statement = select(ExitCase).where(ExitCase.status == CaseStatus.scheduled.value, ExitCase.leaving_date <= on)
    return list(session.exec(statement))


def cases_of_device(session: Session, device_id: str, status: CaseStatus) -> list[ExitCase]:
    case_ids = select(ExitStep.case_id).where(ExitStep.device_id == device_id).distinct()
    statement = select(ExitCase).where(col(ExitCase.id).in_(case_ids), ExitCase.status == status.value)
    return list(session.exec(statement))


def steps_of_cases(session: Session, case_ids: Collection[str]) -> list[ExitStep]:
    """Every step of these cases, each device's in checklist order."""
    statement = select(ExitStep).where(col(ExitStep.case_id).in_(case_ids))
    return list(
        session.exec(statement.order_by(col(ExitStep.case_id), col(ExitStep.device_id), col(ExitStep.position)))
    )


def devices_of_cases(session: Session, case_ids: Collection[str]) -> list[ExitDevice]:
    statement = select(ExitDevice).where(col(ExitDevice.case_id).in_(case_ids))
    return list(session.exec(statement.order_by(col(ExitDevice.case_id), col(ExitDevice.device_id))))


def case_devices(session: Session, case_id: str) -> list[ExitDevice]:
    return devices_of_cases(session, [case_id])


def uncollected_steps(session: Session, left_on_or_before: date) -> list[ExitStep]:
    """School devices of cases in progress still not handed in, for leavers gone since that day or earlier."""
    statement = (
        select(ExitStep)
        .join(ExitCase, col(ExitCase.id) == col(ExitStep.case_id))
        .where(
            ExitStep.kind == "collect_device",
            col(ExitStep.status).not_in(list(FINISHED_STEPS)),
            ExitCase.status == CaseStatus.in_progress.value,
            ExitCase.leaving_date <= left_on_or_before,
        )
    )
    return list(session.exec(statement))


def list_cases(
    session: Session, page: PageParams, status: CaseStatus | None = None, person_id: str | None = None
) -> Page[ExitCasePublic]:
    statement = select(ExitCase)
    if status is not None:
        statement = statement.where(ExitCase.status == status.value)
    if person_id is not None:
        statement = statement.where(ExitCase.person_id == person_id)
    return paginate(session, statement, ExitCase.id, page, lambda cases: [case_public(session, c) for c in cases])


def cancel_case(session: Session, case_id: str, actor: Actor) -> ExitCasePublic:
    case = get_case(session, case_id)
    if case.status != CaseStatus.scheduled.value:
        raise Conflict(f"Only a scheduled exit can be cancelled; this one is {case.status}.")
    case.status = CaseStatus.cancelled.value
    session.add(case)
    record(session, actor, "exit.cancel", "exit_case", case.id, {})
    return case_public(session, case)


def steps_of(session: Session, case_id: str, device_id: str) -> dict[str, ExitStep]:
    """A device's steps in a case, by kind, in checklist order."""
    statement = select(ExitStep).where(ExitStep.case_id == case_id, ExitStep.device_id == device_id)
    return {step.kind: step for step in session.exec(statement.order_by(ExitStep.position))}


def step_of(session: Session, case: ExitCase, step_id: str) -> ExitStep:
    step = session.get(ExitStep, step_id)
    if step is None or step.case_id != case.id:
        raise NotFound("step of this exit case", step_id)
    return step


# --- Views -----------------------------------------------------------------------------------------


def is_overdue(case: ExitCase) -> bool:
    return case.status == CaseStatus.in_progress.value and utcnow().date() >= case.leaving_date + OVERDUE_AFTER


def case_public(session: Session, case: ExitCase) -> ExitCasePublic:
    listed = []
    steps_by_device: dict[str, list[ExitStep]] = defaultdict(list)
    for step in steps_of_cases(session, [case.id]):  # one query for the case, not one per device
        steps_by_device[step.device_id].append(step)
    for exit_device in case_devices(session, case.id):
        steps = [
            StepPublic(
                id=s.id,
                kind=s.kind,
                status=s.status,
                detail=s.detail,  # type: ignore[arg-type]
                command_id=s.command_ids[-1] if s.command_ids else None,
                command_ids=s.command_ids,
                completed_at=s.completed_at,
            )
            for s in steps_by_device[exit_device.device_id]
        ]
        listed.append(
            ExitDevicePublic(
                device_id=exit_device.device_id,
                ownership=exit_device.ownership,
                steps=steps,
                apps_removed=exit_device.apps_removed,
                apps_kept=exit_device.apps_kept,
                licences_returned=exit_device.licences_returned,
            )
        )
    return ExitCasePublic(
        id=case.id,
        person_id=case.person_id,
        status=case.status,
        reason=case.reason,
        leaving_date=case.leaving_date,
        overdue=is_overdue(case),
        created_at=case.created_at,
        started_at=case.started_at,
        completed_at=case.completed_at,
        devices=listed,
    )
