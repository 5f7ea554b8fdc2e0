"""The exit's step engine: a leaver's case moved on across devices, profiles, enrolment and commands.

One case per person, a checklist per device, moved on by the devices' own answers. The case itself
is stored by exit_process/service.py; this flow calls the other domains' services and never writes
their tables.

The exit does not remove anything itself. It moves the device to `exiting`, which empties its desired
state, and the reconciler queues the removals. The exit queues only what no desired state describes:
RemoveMDM once the removals are answered, and EraseDevice once a school device is handed in. Every step's
status is recomputed from the facts (commands, records, certificates), so a restart at any point
resumes where it was, and nothing is queued twice.
"""

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from enrollment import service as enrollment
from exit_process import service
from exit_process.models import (
    FINISHED_STEPS,
    CaseStatus,
    ExitCase,
    ExitCasePublic,
    ExitCreate,
    ExitDevice,
    ExitDevicePublic,
    ExitStep,
    StepPublic,
    StepStatus,
)
from mdm import desired_state
from mdm.actor import SYSTEM, Actor
from mdm.audit.service import record, record_each
from mdm.categories import SCHOOL_OWNED, Category
from mdm.commands import service as commands
from mdm.commands.intents import INTENTS, DeviceLock
from mdm.commands.models import Command, CommandType
from mdm.csv_import import chunks
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceCertificate, DeviceState
from mdm.errors import Conflict
from mdm.ids import new_id, utcnow
from mdm.inventory import service as inventory
from mdm.people import service as people
from mdm.webhooks import service as webhooks
from profiles import service as profiles

PERSONAL_STEPS = (
    "remove_school_apps",
    "remove_proxy",
    "remove_profiles",
    "reclaim_licences",
    "remove_mdm",
    "revoke_certificate",
)
SCHOOL_STEPS = ("collect_device", "wipe", "reclaim_licences", "revoke_certificate", "return_to_pool")
EXIT_DEVICE_STATES = (DeviceState.enrolled.value, DeviceState.exiting.value, DeviceState.registered.value)
UNCOLLECTED_LOCK_AFTER = timedelta(days=7)
CASE_BATCH = 500  # cases started or moved on together; bounds each query's IN list
LOCK_MESSAGE = "This device belongs to the school. Please return it to the IT office."
REMOVE_MDM_TARGET, ERASE_TARGET, LOCK_TARGET = "device:mdm", "device:erase", "device:exit-lock"


# --- Opening a case --------------------------------------------------------------------------------


def open_case(session: Session, data: ExitCreate, actor: Actor, timezone: str) -> ExitCasePublic:
    person = people.require_person(session, data.person_id)
    leaving = data.leaving_date or service.today(timezone)
    if data.dry_run:
        return plan(session, person.id, leaving, data.reason)
    service.refuse_second_case(session, person.id)
    return service.case_public(session, open_new_case(session, person.id, leaving, data.reason, actor, timezone))


def open_new_case(
    session: Session, person_id: str, leaving: date, reason: str, actor: Actor, timezone: str
) -> ExitCase:
    return open_new_cases(session, [service.Opening(person_id, leaving, reason)], actor, timezone)[0]


def open_new_cases(
    session: Session, openings: Sequence[service.Opening], actor: Actor, timezone: str
) -> list[ExitCase]:
    """Stores the cases and starts at once those whose leaving date is today or past."""
    cases = service.create_cases(session, openings, actor)
    today = service.today(timezone)
    start_cases(session, [case for case in cases if case.leaving_date <= today], actor)
    return cases


def _person_devices(session: Session, person_id: str) -> list[Device]:
    return _devices_of_people(session, [person_id]).get(person_id, [])


def _devices_of_people(session: Session, person_ids: Collection[str]) -> dict[str, list[Device]]:
    statement = select(Device).where(col(Device.person_id).in_(person_ids), col(Device.state).in_(EXIT_DEVICE_STATES))
    by_person: dict[str, list[Device]] = defaultdict(list)
    for device in session.exec(statement.order_by(Device.id)):
        by_person[str(device.person_id)].append(device)
    return by_person


def _ownership(device: Device) -> str:
    return "school" if Category(device.category) in SCHOOL_OWNED else "personal"


def plan(session: Session, person_id: str, leaving: date, reason: str) -> ExitCasePublic:
    """The dry run: what an exit would do to each device, stored nowhere."""
    planned = []
    for device in _person_devices(session, person_id):
        ownership = _ownership(device)
        kinds = PERSONAL_STEPS if ownership == "personal" else SCHOOL_STEPS
        removed, _licensed, kept = _apps_of(session, device.id)
        steps = [
            StepPublic(
                id="",
                kind=k,
                status=StepStatus.pending,
                detail=None,
                command_id=None,
                command_ids=[],
                completed_at=None,
            )
            for k in kinds
        ]
        planned.append(
            ExitDevicePublic(
                device_id=device.id,
                ownership=ownership,
                steps=steps,
                apps_removed=removed,
                apps_kept=kept,
                licences_returned=[],
            )
        )
    return ExitCasePublic(
        id=None, person_id=person_id, status="dry_run", reason=reason, leaving_date=leaving, devices=planned
    )


# --- Starting it -----------------------------------------------------------------------------------


def start_case(session: Session, case: ExitCase, actor: Actor) -> None:
    start_cases(session, [case], actor)


def start_cases(session: Session, cases: Sequence[ExitCase], actor: Actor) -> None:
    """Starts cases in batches: a July's leavers start together in one query per kind of fact, not per case."""
    for batch in chunks(list(cases), CASE_BATCH):
        _start_batch(session, batch, actor)


def _start_batch(session: Session, cases: list[ExitCase], actor: Actor) -> None:
    devices_of = _devices_of_people(session, [case.person_id for case in cases])
    device_ids = [device.id for found in devices_of.values() for device in found]
    school_apps = profiles.school_apps_on_devices(session, device_ids)
    installed = inventory.installed_identifiers(session, device_ids)
    started_at, exiting = utcnow(), {}
    for case in cases:
        case.status, case.started_at = CaseStatus.in_progress.value, started_at
        exiting[case.id] = _checklists(session, case, devices_of.get(case.person_id, []), school_apps, installed)
    session.add_all(cases)
    session.flush()
    revoked = enrollment.revoke_people_tokens(session, [case.person_id for case in cases], actor)
    for case in cases:
        case.revoked_tokens = revoked.get(case.person_id, [])
    summaries = [(case.id, {"devices": exiting[case.id], "revoked_tokens": case.revoked_tokens}) for case in cases]
    record_each(session, actor, "exit.start", "exit_case", summaries)
    # The desired state of an exiting device is "nothing of the school's": the reconciler queues the removals.
    desired_state.devices_changed(session, device_ids=[device_id for ids in exiting.values() for device_id in ids])
    advance_cases(session, cases)


def _checklists(
    session: Session,
    case: ExitCase,
    found: list[Device],
    school_apps: dict[str, list[tuple[str, bool]]],
    installed: dict[str, list[str]],
) -> list[str]:
    """Each device's checklist for the case; the enrolled ones move to exiting, and their ids are returned."""
    exiting = []
    for device in found:
        ownership = _ownership(device)
        _school, licensed, kept = _split_apps(school_apps.get(device.id, []), installed.get(device.id, []))
        session.add(
            ExitDevice(
                case_id=case.id, device_id=device.id, ownership=ownership, apps_kept=kept, licences_held=licensed
            )
        )
        kinds = PERSONAL_STEPS if ownership == "personal" else SCHOOL_STEPS
        session.add_all(
            ExitStep(
                id=new_id(),
                case_id=case.id,
                device_id=device.id,
                position=i,
                kind=kind,
                command_ids=[],
                acknowledgements=[],
            )
            for i, kind in enumerate(kinds)
        )
        if device.state == DeviceState.enrolled.value:
            devices.set_state(session, device, DeviceState.exiting)
            exiting.append(device.id)
    return exiting


def _apps_of(session: Session, device_id: str) -> tuple[list[str], list[str], list[str]]:
    school = profiles.school_apps_on_devices(session, [device_id]).get(device_id, [])
    return _split_apps(school, inventory.installed_identifiers(session, [device_id]).get(device_id, []))


def _split_apps(school: list[tuple[str, bool]], installed: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The school's apps on the device (by its own records), those holding a pool licence, and the family's."""
    identifiers = [identifier for identifier, _ in school]
    licensed = [identifier for identifier, is_licensed in school if is_licensed]
    family = [identifier for identifier in installed if identifier not in identifiers]
    return identifiers, licensed, family


# --- Moving it on ----------------------------------------------------------------------------------


def advance_case(session: Session, case: ExitCase) -> None:
    advance_cases(session, [case])


def advance_cases(session: Session, cases: Sequence[ExitCase]) -> None:
    """Recomputes every step from the facts; queues RemoveMDM or EraseDevice when their turn comes."""
    moving = [case for case in cases if case.status == CaseStatus.in_progress.value]
    for batch in chunks(moving, CASE_BATCH):
        facts = _Facts.read(session, batch)
        for case in batch:
            _advance(session, case, facts)


@dataclass
class _Facts:
    """What moving cases on needs, read for a batch of cases at once: one query per kind of fact."""

    steps: dict[str, list[ExitStep]]  # by case id, each device's in checklist order
    exit_devices: dict[str, list[ExitDevice]]  # by case id
    devices_by_id: dict[str, Device]
    sent: dict[str, list[Command]]  # by device id, uncancelled, oldest first
    certificates: dict[str, DeviceCertificate]  # each device's latest
    school_apps: dict[str, list[tuple[str, bool]]]
    filters: set[str]

    @classmethod
    def read(cls, session: Session, cases: list[ExitCase]) -> "_Facts":
        case_ids = [case.id for case in cases]
        steps: dict[str, list[ExitStep]] = defaultdict(list)
        for step in service.steps_of_cases(session, case_ids):
            steps[step.case_id].append(step)
        exit_devices: dict[str, list[ExitDevice]] = defaultdict(list)
        for exit_device in service.devices_of_cases(session, case_ids):
            exit_devices[exit_device.case_id].append(exit_device)
        device_ids = [d.device_id for found in exit_devices.values() for d in found]
        since = min((case.started_at for case in cases if case.started_at is not None), default=None)
        return cls(
            steps=steps,
            exit_devices=exit_devices,
            devices_by_id=devices.devices_by_id(session, device_ids),
            sent=_commands_of(session, device_ids, since),
            certificates=devices.latest_certificates(session, device_ids),
            school_apps=profiles.school_apps_on_devices(session, device_ids),
            filters=profiles.filtering_profile_identifiers(session),
        )

    def steps_of(self, case_id: str, device_id: str) -> dict[str, ExitStep]:
        return {step.kind: step for step in self.steps[case_id] if step.device_id == device_id}

    def sent_since(self, device_id: str, since: datetime | None) -> list[Command]:
        return [c for c in self.sent.get(device_id, []) if since is None or c.created_at >= since]


def _advance(session: Session, case: ExitCase, facts: _Facts) -> None:
    before = {step.id: step.status for step in facts.steps[case.id]}
    for exit_device in facts.exit_devices[case.id]:
        steps = facts.steps_of(case.id, exit_device.device_id)
        if exit_device.ownership == "personal":
            _advance_personal(session, case, exit_device, steps, facts)
        else:
            _advance_school(session, case, exit_device, steps, facts)
    _settle_case(session, case, facts.steps[case.id], before)


def _commands_of(session: Session, device_ids: list[str], since: datetime | None) -> dict[str, list[Command]]:
    statement = select(Command).where(col(Command.device_id).in_(device_ids), col(Command.status) != "cancelled")
    if since is not None:
        statement = statement.where(Command.created_at >= since)
    sent: dict[str, list[Command]] = defaultdict(list)
    for command in session.exec(statement.order_by(Command.id)):
        sent[command.device_id].append(command)
    return sent


def _advance_personal(
    session: Session, case: ExitCase, exit_device: ExitDevice, steps: dict[str, ExitStep], facts: _Facts
) -> None:
    sent, filters = facts.sent_since(exit_device.device_id, case.started_at), facts.filters
    removals = {
        "remove_school_apps": [c for c in sent if c.type == CommandType.RemoveApplication.value],
        "remove_proxy": [c for c in sent if c.type == CommandType.RemoveProfile.value and _identifier(c) in filters],
        "remove_profiles": [
            c for c in sent if c.type == CommandType.RemoveProfile.value and _identifier(c) not in filters
        ],
    }
    for kind, cmds in removals.items():
        _from_commands(steps[kind], cmds, nothing="nothing of the school's to remove")
    exit_device.apps_removed = sorted(
        {_identifier(c) for c in removals["remove_school_apps"] if c.status == "acknowledged"}
    )
    _reclaim(steps["reclaim_licences"], exit_device, facts, after=[steps[k] for k in removals])
    if all(steps[k].status in (*FINISHED_STEPS, "failed") for k in removals):
        _once(session, steps["remove_mdm"], sent, CommandType.RemoveMDM, REMOVE_MDM_TARGET)
    if steps["remove_mdm"].status == StepStatus.done.value:
        for kind in removals:  # a device drops every managed app and profile when management ends
            if steps[kind].status == StepStatus.failed.value:
                _finish(
                    steps[kind],
                    StepStatus.done,
                    f"{steps[kind].detail}; removed when management ended (RemoveMDM acknowledged)",
                )
    _certificate(session, steps["revoke_certificate"], exit_device, facts, after=steps["remove_mdm"])
    session.add(exit_device)


def _advance_school(
    session: Session, case: ExitCase, exit_device: ExitDevice, steps: dict[str, ExitStep], facts: _Facts
) -> None:
    device = facts.devices_by_id[exit_device.device_id]
    sent = facts.sent_since(device.id, case.started_at)
    collect = steps["collect_device"]
    if collect.status not in FINISHED_STEPS:
        collect.detail = "waiting for the device to be handed in to IT"
        session.add(collect)
    never_enrolled = device.id not in facts.certificates
    if never_enrolled:
        for kind in ("wipe", "reclaim_licences", "revoke_certificate"):
            _finish(steps[kind], StepStatus.skipped, "the device was never enrolled")
    elif collect.status in FINISHED_STEPS:
        _wipe(session, steps["wipe"], device, sent)
        _reclaim(steps["reclaim_licences"], exit_device, facts, after=[steps["wipe"]])
        _certificate(session, steps["revoke_certificate"], exit_device, facts, after=steps["wipe"])
    if collect.status in FINISHED_STEPS and (never_enrolled or steps["wipe"].status in FINISHED_STEPS):
        if never_enrolled and device.state != DeviceState.in_stock.value:
            devices.set_state(session, device, DeviceState.in_stock, unassign=True)
        if device.state == DeviceState.in_stock.value and device.person_id is None:
            _finish(steps["return_to_pool"], StepStatus.done, "in stock, unassigned, ready to enrol again")


def _wipe(session: Session, step: ExitStep, device: Device, sent: list[Command]) -> None:
    if step.status in FINISHED_STEPS:
        return
    if device.held and not any(c.type == CommandType.EraseDevice.value for c in sent):
        step.status, step.detail = StepStatus.pending.value, f"blocked: the device is held ({device.held_reason})"
        session.add(step)
        return
    _once(session, step, sent, CommandType.EraseDevice, ERASE_TARGET)


def _identifier(command: Command) -> str:
    return str(command.payload.get("identifier", ""))


def _from_commands(step: ExitStep, sent: list[Command], nothing: str) -> None:
    """A removal step follows its commands: all acknowledged is done, an error is failed, else waiting.

    Only the latest command for each target counts: a retry that succeeded outweighs the error before it.
    """
    if step.status in FINISHED_STEPS:
        return
    step.command_ids = [c.id for c in sent]
    step.acknowledgements = [_ack(c) for c in sent if c.answered_at is not None]
    latest = list({(c.type, _identifier(c)): c for c in sent}.values())
    if not latest:
        _finish(step, StepStatus.done, nothing)
    elif any(c.status in ("queued", "sent", "not_now") for c in latest):
        step.status, step.detail = (
            StepStatus.waiting_for_device.value,
            f"{len(latest)} command(s) sent, waiting for the device",
        )
    elif any(c.status in ("error", "expired") for c in latest):
        failed = next(c for c in latest if c.status in ("error", "expired"))
        step.status, step.detail = (
            StepStatus.failed.value,
            f"{failed.type} {_identifier(failed)}: {failed.result_detail}",
        )
    else:
        _finish(step, StepStatus.done, f"{len(latest)} removal(s) acknowledged by the device")


def _once(session: Session, step: ExitStep, sent: list[Command], command_type: CommandType, target: str) -> None:
    """Queues the step's single command the first time, then follows it."""
    if step.status in FINISHED_STEPS:
        return
    mine = [c for c in sent if c.type == command_type.value]
    retried = step.status == StepStatus.pending.value and bool(mine) and mine[-1].status in ("error", "expired")
    if not mine or retried:
        command = commands.queue_command(
            session, step.device_id, INTENTS[command_type](), "exit", target=target, intent_key=command_type.value
        )
        mine = [command]
    _from_commands(step, mine[-1:], nothing="")


def _reclaim(step: ExitStep, exit_device: ExitDevice, facts: _Facts, after: Iterable[ExitStep]) -> None:
    if step.status in FINISHED_STEPS:
        return
    held = facts.school_apps.get(exit_device.device_id, [])
    licensed = [identifier for identifier, is_licensed in held if is_licensed]
    exit_device.licences_returned = sorted(set(exit_device.licences_held) - set(licensed))
    if not held:
        _finish(step, StepStatus.done, f"{len(exit_device.licences_returned)} licence(s) back in their pools")
    elif all(s.status in (*FINISHED_STEPS, "failed") for s in after):
        step.status, step.detail = StepStatus.failed.value, f"still held: {', '.join(licensed)}"
    else:
        step.status, step.detail = StepStatus.waiting_for_device.value, f"{len(licensed)} licence(s) still held"


def _certificate(session: Session, step: ExitStep, exit_device: ExitDevice, facts: _Facts, after: ExitStep) -> None:
    if step.status in FINISHED_STEPS:
        return
    live = facts.certificates.get(exit_device.device_id)
    if live is not None and live.revoked_at is None:
        step.status = (
            StepStatus.pending.value if after.status not in FINISHED_STEPS else StepStatus.waiting_for_device.value
        )
        step.detail = f"waiting for {after.kind}"
        return
    exit_device.certificate_serials = [live.serial_number] if live else []
    exit_device.crl_number = devices.current_crl_number(session)
    _finish(
        step,
        StepStatus.done,
        f"certificate {live.serial_number if live else '-'} revoked; CRL {exit_device.crl_number} lists it",
    )


def _finish(step: ExitStep, status: StepStatus, detail: str, actor: str = "system") -> None:
    if step.status in FINISHED_STEPS:
        return
    step.status, step.detail, step.completed_at, step.actor = status.value, detail, utcnow(), actor


def _ack(command: Command) -> dict[str, Any]:
    return {
        "command_id": command.id,
        "type": command.type,
        "status": command.status,
        "answered_at": command.answered_at.isoformat() if command.answered_at else None,
        "detail": command.result_detail,
    }


def _settle_case(session: Session, case: ExitCase, steps: list[ExitStep], before: dict[str, str]) -> None:
    for step in steps:
        session.add(step)
        if step.status == StepStatus.failed.value and before.get(step.id) != StepStatus.failed.value:
            webhooks.emit(
                session,
                "exit.step_failed",
                {
                    "case_id": case.id,
                    "person_id": case.person_id,
                    "device_id": step.device_id,
                    "step": step.kind,
                    "detail": step.detail,
                },
            )
    if not all(step.status in FINISHED_STEPS for step in steps):
        return
    manual = any(step.status == StepStatus.done_manually.value for step in steps)
    case.status = (CaseStatus.completed_with_exceptions if manual else CaseStatus.completed).value
    case.completed_at = utcnow()
    session.add(case)
    record(session, SYSTEM, "exit.complete", "exit_case", case.id, {"status": case.status})
    webhooks.emit(session, "exit.completed", {"case_id": case.id, "person_id": case.person_id, "status": case.status})


# --- Device answers, hand-ins and forcing ----------------------------------------------------------


def on_command_result(session: Session, command: Command) -> None:
    """Every answer from a device in an exit moves its case on."""
    advance_cases(session, service.cases_of_device(session, command.device_id, CaseStatus.in_progress))


def complete_step(session: Session, case_id: str, step_id: str, note: str, actor: Actor) -> ExitCasePublic:
    """A step done by hand: a hand-in confirmed, or (once the case is overdue) the rest forced."""
    case = service.get_case(session, case_id)
    step = service.step_of(session, case, step_id)
    if case.status != CaseStatus.in_progress.value:
        raise Conflict(f"This exit case is {case.status}; only a case in progress has steps to complete.")
    if step.kind == "collect_device":
        _finish(step, StepStatus.done, f"handed in: {note}", actor.label)
        record(
            session,
            actor,
            "exit.step_complete",
            "exit_case",
            case.id,
            {"step": step.kind, "device_id": step.device_id, "note": note},
        )
    else:
        _force_device(session, case, step.device_id, note, actor)
    advance_case(session, case)
    return service.case_public(session, case)


def _force_device(session: Session, case: ExitCase, device_id: str, note: str, actor: Actor) -> None:
    overdue_on = case.leaving_date + service.OVERDUE_AFTER
    if utcnow().date() < overdue_on:
        raise Conflict(f"The rest of this device's steps can be forced once the case is overdue, from {overdue_on}.")
    device = devices.lock_for_update(session, device_id)
    for command in commands.open_commands(session, device_id):
        commands.cancel_command(session, device_id, command.id, "exit forced")
    revoked = enrollment.revoke_device(session, device_id, f"exit forced: {note}", actor)
    devices.set_state(session, device, DeviceState.retired)
    for step in service.steps_of(session, case.id, device_id).values():
        _finish(step, StepStatus.done_manually, f"forced: {note}", actor.label)
        session.add(step)
    exit_device = session.get(ExitDevice, (case.id, device_id))
    if exit_device is not None:
        exit_device.certificate_serials = revoked["revoked_certificates"]  # type: ignore[assignment]
        exit_device.crl_number = revoked["crl_number"]  # type: ignore[assignment]
        session.add(exit_device)
    record(session, actor, "exit.force", "exit_case", case.id, {"device_id": device_id, "note": note})


def retry_step(session: Session, case_id: str, step_id: str, actor: Actor) -> ExitCasePublic:
    case = service.get_case(session, case_id)
    step = service.step_of(session, case, step_id)
    if step.status != StepStatus.failed.value:
        raise Conflict(f"Only a failed step can be retried; this one is {step.status}.")
    step.status, step.detail = StepStatus.pending.value, "retried"
    session.add(step)
    record(session, actor, "exit.step_retry", "exit_case", case.id, {"step": step.kind, "device_id": step.device_id})
    # The reconciler queues any removal still needed; RemoveMDM or EraseDevice is queued anew below.
    desired_state.devices_changed(session, device_ids=[step.device_id])
    advance_case(session, case)
    return service.case_public(session, case)


# --- Daily work ------------------------------------------------------------------------------------


def start_due_cases(session: Session, on: date) -> list[str]:
    due = service.due_cases(session, on)
    start_cases(session, due, SYSTEM)
    return [case.id for case in due]


def lock_uncollected(session: Session, on: date) -> list[str]:
    """A school device not handed in a week after its leaver left is locked with a message."""
    locked = []
    for step in service.uncollected_steps(session, left_on_or_before=on - UNCOLLECTED_LOCK_AFTER):
        already = [c for c in commands.open_commands(session, step.device_id) if c.target == LOCK_TARGET]
        if not already and not step.command_ids:
            command = commands.queue_command(
                session, step.device_id, DeviceLock(message=LOCK_MESSAGE), "exit", target=LOCK_TARGET, intent_key="lock"
            )
            step.command_ids = [command.id]
            step.detail = "not handed in: locked with a message asking for its return"
            session.add(step)
            locked.append(step.device_id)
    return locked


def advance_open_cases(session: Session) -> int:
    cases = service.cases_in(session, CaseStatus.in_progress)
    advance_cases(session, cases)
    return len(cases)
