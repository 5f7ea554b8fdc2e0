"""The compliance run: every enrolled device against the rules, in batches, writing only what changed.

Per batch of 1,000 devices a fixed handful of queries loads the evidence (device rows, inventories,
desired and reported state); the rules are judged in memory (compliance/rules.py); changed verdicts
are written in bulk, with a history row each. Then escalation: what the reconciler can fix is queued
again at once, a device failing longer than its category's grace period is quarantined (its network
access drops to none, so the reconciler removes its Wi-Fi), and a quarantine lifts itself once the
device is compliant again.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, update
from sqlmodel import Session, col, select

from compliance.models import ComplianceHistory, ComplianceRule, ComplianceRun, Escalation, RulePublic, RuleUpdate
from compliance.os_releases import service as os_releases
from compliance.rules import REMEDIABLE, RULES, RULES_BY_ID, Evidence, OsCatalogue, evaluate
from mdm.csv_import import chunks
from mdm.database import Database
from mdm.devices import service as devices
from mdm.devices.models import Device
from mdm.errors import Invalid, NotFound
from mdm.ids import new_id, utcnow
from mdm.inventory.service import reported_inventories
from mdm.webhooks.service import emit, emit_many
from profiles import service as profiles

log = logging.getLogger("mdm.compliance")
BATCH_SIZE = 1000
# A batch takes well under a second; a run that has not touched its record for this long has died.
RUN_SILENT_FOR = timedelta(minutes=10)
Progress = Callable[[int, int], None]


# --- Rules -----------------------------------------------------------------------------------------


def rule_settings(session: Session) -> dict[str, tuple[bool, dict[str, Any]]]:
    stored = {rule.id: rule for rule in session.exec(select(ComplianceRule))}
    settings = {}
    for definition in RULES:
        row = stored.get(definition.id)
        enabled = row.enabled if row else definition.enabled
        settings[definition.id] = (enabled, {**definition.defaults, **(row.params if row else {})})
    return settings


def list_rules(session: Session) -> list[RulePublic]:
    return [
        RulePublic(id=d.id, description=d.description, source=d.source, enabled=enabled, params=params)
        for d, (enabled, params) in zip(RULES, rule_settings(session).values(), strict=True)
    ]


# Day counts and lengths; a hundred years is plenty, and a larger count of days would overflow the
# date arithmetic of every nightly run (now - timedelta(days=...) before year 1).
MAX_RULE_PARAM = 36_500


def _whole_number_in_range(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RULE_PARAM


def update_rule(session: Session, rule_id: str, change: RuleUpdate, actor: Any) -> RulePublic:
    from mdm.audit.service import record

    definition = RULES_BY_ID.get(rule_id)
    if definition is None:
        raise NotFound("compliance rule", rule_id)
    unknown = sorted(set(change.params or {}) - set(definition.defaults))
    if unknown:
        raise Invalid(
            "Unknown parameters for this rule.",
            [{"field": f"params.{k}", "message": "not a parameter of this rule"} for k in unknown],
        )
    bad = [k for k, v in (change.params or {}).items() if not _whole_number_in_range(v)]
    if bad:
        raise Invalid(
            f"Rule parameters are whole numbers from 1 to {MAX_RULE_PARAM}.",
            [{"field": f"params.{k}", "message": f"must be a whole number from 1 to {MAX_RULE_PARAM}"} for k in bad],
        )
    row = session.get(ComplianceRule, rule_id) or ComplianceRule(
        id=rule_id, enabled=definition.enabled, params={}, updated_at=utcnow()
    )
    if change.enabled is not None:
        row.enabled = change.enabled
    if change.params is not None:
        row.params = {**row.params, **change.params}
    row.updated_at = utcnow()
    session.add(row)
    record(session, actor, "compliance.rule_update", "compliance_rule", rule_id, change.model_dump(exclude_none=True))
    session.flush()
    return next(rule for rule in list_rules(session) if rule.id == rule_id)


def os_catalogue(session: Session) -> OsCatalogue:
    """Release data for the OS rules (empty until `mdm os-releases sync` or a loaded file fills it)."""
    return OsCatalogue(
        minimum=os_releases.minimum_supported_all(session), releases=os_releases.releases_by_line(session)
    )


# --- The run ---------------------------------------------------------------------------------------


def start_run(database: Database, trigger: str) -> str:
    now = utcnow()
    with database.writing() as session:
        _abandon_silent_runs(session, now)
        run = ComplianceRun(id=new_id(), status="running", trigger=trigger, started_at=now, heartbeat_at=now)
        session.add(run)
    return run.id


def _abandon_silent_runs(session: Session, now: datetime) -> None:
    """A manual run has no job lease to expire: one whose process died is found by its silence instead."""
    last_sign_of_life = func.coalesce(ComplianceRun.heartbeat_at, ComplianceRun.started_at)
    session.execute(
        update(ComplianceRun)
        .where(col(ComplianceRun.status) == "running", last_sign_of_life < now - RUN_SILENT_FOR)
        .values(status="abandoned", finished_at=now, detail=f"its process stopped: no progress for {RUN_SILENT_FOR}")
    )


def _touch(session: Session, run_id: str) -> None:
    session.execute(update(ComplianceRun).where(col(ComplianceRun.id) == run_id).values(heartbeat_at=utcnow()))


def abandon_runs(database: Database, trigger: str) -> None:
    """Marks earlier attempts of this slot, still 'running' because their replica died, as abandoned."""
    with database.writing() as session:
        for run in session.exec(
            select(ComplianceRun).where(ComplianceRun.trigger == trigger, ComplianceRun.status == "running")
        ):
            run.status, run.finished_at, run.detail = (
                "abandoned",
                utcnow(),
                "its replica stopped; the slot was taken over",
            )
            session.add(run)


def run_compliance(
    database: Database,
    trigger: str,
    progress: Progress | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> ComplianceRun:
    run_id = run_id or start_run(database, trigger)
    started = time.perf_counter()
    now = now or utcnow()
    with database.reading() as session:
        device_ids = list(session.exec(select(Device.id).where(Device.state == "enrolled").order_by(Device.id)))
        setup = _RunSetup(
            rules=rule_settings(session),
            escalation={e.category: e for e in session.exec(select(Escalation))},
            catalogue=profiles.desired_catalogue(session),
            os=os_catalogue(session),
        )
    totals = {
        "devices_evaluated": 0,
        "compliant": 0,
        "non_compliant": 0,
        "unknown": 0,
        "changed": 0,
        "remediated": 0,
        "quarantined": 0,
        "released": 0,
    }
    try:
        for batch in chunks(device_ids, BATCH_SIZE):
            with database.writing() as session:
                for key, value in _run_batch(session, batch, run_id, now, setup).items():
                    totals[key] += value
                _touch(session, run_id)
            if progress:
                progress(totals["devices_evaluated"], len(device_ids))
    except Exception as exc:
        _finish(database, run_id, "failed", totals, started, f"{type(exc).__name__}: {exc}")
        raise
    return _finish(database, run_id, "completed", totals, started, None)


def _finish(
    database: Database, run_id: str, status: str, totals: dict[str, int], started: float, detail: str | None
) -> ComplianceRun:
    with database.writing() as session:
        run = session.get(ComplianceRun, run_id)
        assert run is not None
        for key, value in totals.items():
            setattr(run, key, value)
        run.status, run.finished_at, run.detail = status, utcnow(), detail
        run.duration_ms = int((time.perf_counter() - started) * 1000)
        session.add(run)
        notify(session, "compliance.run_completed", {"run_id": run.id, **totals, "status": status})
    log.info("compliance run %s %s", run_id, status, extra=totals)
    return run


@dataclass
class _RunSetup:
    """What every batch of a run judges against, read once at its start."""

    rules: dict[str, tuple[bool, dict[str, Any]]]
    escalation: dict[str, Escalation]
    catalogue: profiles.Catalogue
    os: OsCatalogue


def _run_batch(session: Session, batch: list[str], run_id: str, now: datetime, setup: _RunSetup) -> dict[str, int]:
    rules, escalation, catalogue, os = setup.rules, setup.escalation, setup.catalogue, setup.os
    rows = devices.compliance_rows(session, batch)
    desired = profiles.desired_by_device(session, batch, catalogue)
    inventories = reported_inventories(session, batch)
    ages, ratings = _ages_and_ratings(session, rows, now) if rules["age_rating"][0] else ({}, {})
    counts = {
        "devices_evaluated": len(rows),
        "compliant": 0,
        "non_compliant": 0,
        "unknown": 0,
        "changed": 0,
        "remediated": 0,
        "quarantined": 0,
        "released": 0,
    }
    changes, history, remediate, reconcile_now = [], [], [], []
    events: list[tuple[str, dict[str, Any]]] = []
    for device_id, row in rows.items():
        desired_profiles, desired_apps = desired[device_id]
        inventory = inventories.get(device_id)
        evidence = Evidence(
            device_id,
            row.platform,
            # The device's latest word on its OS (a piece may carry it alone); else what it was registered with.
            (inventory and inventory.os_version) or row.os_version,
            row.last_checkin_at,
            row.enrolled_at,
            inventory,
            desired_profiles,
            desired_apps,
            age=ages.get(row.person_id),
            app_ratings=ratings,
        )
        status, failures = evaluate(evidence, rules, now, os)
        counts[status] += 1
        if any(f["rule"] in REMEDIABLE for f in failures):
            remediate.append(device_id)
        change = _escalate(row, status, failures, now, escalation, counts)
        if change is not None:
            changes.append({"b_id": device_id, **change})
            if change["quarantined_at"] != row.quarantined_at:
                reconcile_now.append(device_id)
                if change["quarantined_at"] is not None:
                    events.append(("device.quarantined", {"device_id": device_id, "failures": failures}))
            if status != row.compliance_status or failures != row.compliance_failures:
                history.append(
                    {
                        "id": new_id(),
                        "device_id": device_id,
                        "run_id": run_id,
                        "status": status,
                        "failures": failures,
                        "changed_at": now,
                    }
                )
                events.extend(_change_events(device_id, row.compliance_status, status, failures))
    devices.record_compliance(session, changes, list(rows), now)
    if history:
        session.execute(insert(ComplianceHistory), history)
    if events:
        emit_many(session, events)  # one query and one insert for the whole batch's webhooks
    counts["changed"] = len(history)
    counts["remediated"] = len(remediate)
    # What the reconciler can put right is queued again now; quarantines and releases move the Wi-Fi.
    profiles.reconcile_devices(session, remediate + reconcile_now, catalogue)
    return counts


def _ages_and_ratings(session: Session, rows: dict[str, Any], now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """Learners' ages and the catalogue's age ratings, for the age_rating rule (off by default)."""
    from mdm.people.models import Person

    person_ids = {row.person_id for row in rows.values() if row.person_id}
    people = session.exec(
        select(Person.id, Person.date_of_birth).where(
            col(Person.id).in_(person_ids), Person.kind == "learner", col(Person.date_of_birth).is_not(None)
        )
    )
    today = now.date()
    ages = {pid: today.year - born.year - ((today.month, today.day) < (born.month, born.day)) for pid, born in people}
    return ages, profiles.app_age_ratings(session)


def _escalate(
    row: Any,
    status: str,
    failures: list[dict[str, str]],
    now: datetime,
    escalation: dict[str, Escalation],
    counts: dict[str, int],
) -> dict[str, Any] | None:
    failing_since = row.compliance_failing_since if status == "non_compliant" else None
    if status == "non_compliant" and failing_since is None:
        failing_since = now
    quarantined_at = row.quarantined_at
    policy = escalation.get(row.category)
    grace_over = (
        policy is not None
        and failing_since is not None
        and (failing_since <= now - timedelta(days=policy.quarantine_after_days))
    )
    if status == "non_compliant" and quarantined_at is None and policy is not None and policy.quarantine and grace_over:
        quarantined_at = now
        counts["quarantined"] += 1
    if status == "compliant" and quarantined_at is not None:
        quarantined_at = None  # fixed: the quarantine lifts itself
        counts["released"] += 1
    new = {"status": status, "failures": failures, "failing_since": failing_since, "quarantined_at": quarantined_at}
    old = {
        "status": row.compliance_status,
        "failures": row.compliance_failures,
        "failing_since": row.compliance_failing_since,
        "quarantined_at": row.quarantined_at,
    }
    return None if new == old else new


def _change_events(
    device_id: str, before: str, after: str, failures: list[dict[str, str]]
) -> list[tuple[str, dict[str, Any]]]:
    if after == "non_compliant" and before != "non_compliant":
        return [("device.noncompliant", {"device_id": device_id, "failures": failures})]
    if after == "compliant" and before == "non_compliant":
        return [("device.compliant", {"device_id": device_id})]
    return []


def notify(session: Session, event: str, data: dict[str, Any]) -> None:
    """Signed webhooks for other systems, written in this transaction (delivered later, never waited for)."""
    emit(session, event, data)


# --- Reading ---------------------------------------------------------------------------------------


def get_run(session: Session, run_id: str) -> ComplianceRun:
    run = session.get(ComplianceRun, run_id)
    if run is None:
        raise NotFound("compliance run", run_id)
    return run


def device_history(session: Session, device_id: str) -> list[ComplianceHistory]:
    statement = (
        select(ComplianceHistory)
        .where(ComplianceHistory.device_id == device_id)
        .order_by(col(ComplianceHistory.changed_at).desc())
    )
    return list(session.exec(statement))
