from typing import Annotated, Any

from fastapi import APIRouter, Depends, status
from fastapi.responses import StreamingResponse

from compliance import reports, service
from compliance.models import RulePublic, RuleUpdate, RunPublic
from mdm.actor import Role
from mdm.database import Database
from mdm.dependencies import READERS, ReadSession, WriteSession, allow, get_database
from mdm.devices import service as devices
from mdm.openapi import answered_as

router = APIRouter(tags=["compliance"])
Readers = allow(*READERS)


@router.get("/api/v1/compliance/rules", response_model=dict[str, list[RulePublic]])
def list_rules(session: ReadSession, _actor: Readers) -> dict[str, list[RulePublic]]:
    """Each rule with its stable id, what it checks, the source it enforces and its parameters."""
    return {"items": service.list_rules(session)}


@router.put("/api/v1/compliance/rules/{rule_id}", response_model=RulePublic)
def update_rule(rule_id: str, change: RuleUpdate, session: WriteSession, actor: allow(Role.admin)) -> RulePublic:
    return service.update_rule(session, rule_id, change, actor)


@router.post("/api/v1/compliance/runs", status_code=status.HTTP_202_ACCEPTED, response_model=dict[str, str])
def start_run(
    actor: allow(Role.admin, Role.technician), database: Annotated[Database, Depends(get_database)]
) -> dict[str, str]:
    """Runs the check now, the same code as the nightly job; poll the run for its counts."""
    import threading

    run_id = service.start_run(database, f"manual: {actor.label}")
    threading.Thread(
        target=service.run_compliance,
        args=(database, "manual"),
        kwargs={"run_id": run_id},
        name=f"compliance-{run_id}",
        daemon=True,
    ).start()
    return {"id": run_id, "status": "running"}


@router.get("/api/v1/compliance/runs/{run_id}", response_model=RunPublic)
def get_run(run_id: str, session: ReadSession, _actor: Readers) -> Any:
    return service.get_run(session, run_id)


@router.get("/api/v1/compliance/summary")
def compliance_summary(session: ReadSession, _actor: Readers) -> dict[str, Any]:
    """Enrolled devices by status, by category and by failing rule."""
    return reports.summary(session)


@router.get(
    "/api/v1/compliance/noncompliant.csv",
    response_class=StreamingResponse,
    responses=answered_as("text/csv", description="One line per non-compliant device."),
)
def noncompliant_csv(_actor: Readers, database: Annotated[Database, Depends(get_database)]) -> StreamingResponse:
    """The devices to chase, with the person each belongs to and every reason, as CSV."""

    def lines():  # type: ignore[no-untyped-def]
        with database.reading() as session:
            yield from reports.noncompliant_csv(session)

    headers = {"Content-Disposition": 'attachment; filename="noncompliant-devices.csv"'}
    return StreamingResponse(lines(), media_type="text/csv", headers=headers)


@router.get("/api/v1/devices/{device_id}/compliance")
def device_compliance(device_id: str, session: ReadSession, _actor: Readers) -> dict[str, Any]:
    """The device's verdict and its history (a row each time its status or failures changed)."""
    device = devices.require_device(session, device_id)
    return {
        "status": device.compliance_status,
        "failures": device.compliance_failures,
        "evaluated_at": device.compliance_evaluated_at,
        "failing_since": device.compliance_failing_since,
        "quarantined_at": device.quarantined_at,
        "history": [h.model_dump(exclude={"device_id"}) for h in service.device_history(session, device_id)],
    }
