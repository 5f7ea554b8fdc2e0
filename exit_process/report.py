"""The evidence of an exit, for the data protection officer: JSON, and a printable page."""

from html import escape
from typing import Any

from sqlmodel import Session, col, or_, select

from exit_process.models import ExitCase, ExitDevice, ExitStep
from mdm.audit.models import AuditEvent
from mdm.audit.service import verify_chain
from mdm.people import service as people
from mdm.security_headers import page_policy


def evidence(session: Session, case: ExitCase) -> dict[str, Any]:
    person = people.get_person(session, case.person_id)
    exit_devices = list(
        session.exec(select(ExitDevice).where(ExitDevice.case_id == case.id).order_by(ExitDevice.device_id))
    )
    device_ids = [d.device_id for d in exit_devices]
    chain = verify_chain(session)
    return {
        "case": {
            "id": case.id,
            "status": case.status,
            "reason": case.reason,
            "leaving_date": case.leaving_date.isoformat(),
            "opened_at": case.created_at.isoformat(),
            "opened_by": case.created_by,
            "started_at": case.started_at.isoformat() if case.started_at else None,
            "completed_at": case.completed_at.isoformat() if case.completed_at else None,
            "enrolment_tokens_revoked": case.revoked_tokens,
        },
        "person": {"id": person.id, "external_id": person.external_id, "display_name": person.display_name},
        "devices": [_device(session, case, d) for d in exit_devices],
        "audit_events": _events(session, case, device_ids),
        "audit_chain": {"intact": chain.ok, "events_checked": chain.events_checked, "problem": chain.problem},
    }


def _device(session: Session, case: ExitCase, exit_device: ExitDevice) -> dict[str, Any]:
    steps = session.exec(
        select(ExitStep)
        .where(ExitStep.case_id == case.id, ExitStep.device_id == exit_device.device_id)
        .order_by(ExitStep.position)
    )
    return {
        "device_id": exit_device.device_id,
        "ownership": exit_device.ownership,
        "steps": [
            {
                "kind": s.kind,
                "status": s.status,
                "detail": s.detail,
                "completed_at": s.completed_at.isoformat() if s.completed_at else None,
                "actor": s.actor,
                "command_ids": s.command_ids,
                "device_acknowledgements": s.acknowledgements,
            }
            for s in steps
        ],
        "apps_removed": exit_device.apps_removed,
        "apps_kept": exit_device.apps_kept,
        "licences_returned": exit_device.licences_returned,
        "certificates_revoked": exit_device.certificate_serials,
        "crl_number": exit_device.crl_number,
    }


def _events(session: Session, case: ExitCase, device_ids: list[str]) -> list[dict[str, Any]]:
    about_case = (AuditEvent.object_type == "exit_case") & (AuditEvent.object_id == case.id)
    about_devices = (
        (AuditEvent.object_type == "device")
        & col(AuditEvent.object_id).in_(device_ids)
        & (AuditEvent.occurred_at >= case.created_at)
    )
    statement = select(AuditEvent).where(or_(about_case, about_devices)).order_by(AuditEvent.seq)
    return [
        {
            "seq": e.seq,
            "occurred_at": e.occurred_at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "object_id": e.object_id,
            "hash": e.hash,
            "prev_hash": e.prev_hash,
        }
        for e in session.exec(statement)
    ]


STYLE = (
    "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;width:100%;margin:1em 0}"
    "td,th{border:1px solid #999;padding:4px;text-align:left;vertical-align:top}code{font-size:12px}"
    "@media print{a{color:inherit}}"
)
# The page runs no script and loads nothing; its one inline style is allowed by hash, not 'unsafe-inline'.
CONTENT_SECURITY_POLICY = page_policy(styles=[STYLE])


def as_html(report: dict[str, Any]) -> str:
    case, person = report["case"], report["person"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Exit evidence</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Exit evidence: {escape(person['display_name'])} ({escape(person['external_id'])})</h1>",
        f"<p>Case <code>{escape(case['id'])}</code>, {escape(case['status'])}. Reason: {escape(case['reason'])}. "
        f"Leaving date {escape(case['leaving_date'])}. Opened {escape(case['opened_at'])} by {escape(case['opened_by'])}; "
        f"completed {escape(str(case['completed_at'] or 'not yet'))}.</p>",
    ]
    for device in report["devices"]:
        parts.append(f"<h2>Device <code>{escape(device['device_id'])}</code> ({escape(device['ownership'])})</h2>")
        parts.append(
            "<table><tr><th>Step</th><th>Status</th><th>When</th><th>By</th><th>Commands and the device's answers</th><th>Detail</th></tr>"
        )
        for step in device["steps"]:
            answers = "<br>".join(
                f"<code>{escape(a['command_id'])}</code> {escape(a['type'])}: {escape(a['status'])} {escape(str(a['answered_at']))}"
                for a in step["device_acknowledgements"]
            ) or "<br>".join(f"<code>{escape(c)}</code>" for c in step["command_ids"])
            parts.append(
                f"<tr><td>{escape(step['kind'])}</td><td>{escape(step['status'])}</td><td>{escape(str(step['completed_at'] or ''))}</td>"
                f"<td>{escape(str(step['actor'] or ''))}</td><td>{answers}</td><td>{escape(str(step['detail'] or ''))}</td></tr>"
            )
        parts.append("</table>")
        parts.append(
            f"<p>Apps removed: {escape(', '.join(device['apps_removed']) or 'none')}. "
            f"Apps kept (the family's own): {escape(', '.join(device['apps_kept']) or 'none')}. "
            f"Licences returned: {escape(', '.join(device['licences_returned']) or 'none')}. "
            f"Certificates revoked: {escape(', '.join(device['certificates_revoked']) or 'none')} "
            f"(CRL number {escape(str(device['crl_number']))}).</p>"
        )
    chain = report["audit_chain"]
    parts.append(
        f"<h2>Audit trail</h2><p>The audit chain is {'intact' if chain['intact'] else 'BROKEN: ' + escape(str(chain['problem']))} "
        f"({chain['events_checked']} events checked). Each event's hash covers the one before it.</p><table>"
        "<tr><th>#</th><th>When</th><th>Who</th><th>What</th><th>Hash</th></tr>"
    )
    for event in report["audit_events"]:
        parts.append(
            f"<tr><td>{event['seq']}</td><td>{escape(event['occurred_at'])}</td><td>{escape(event['actor'])}</td>"
            f"<td>{escape(event['action'])}</td><td><code>{escape(event['hash'])}</code></td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
