from typing import Annotated

from fastapi import APIRouter, Depends, Query

from mdm.actor import Role
from mdm.audit import service
from mdm.audit.models import AuditEventPublic, ChainReport
from mdm.dependencies import ReadSession, allow
from mdm.pagination import Page, PageParams, page_params
from mdm.validation import AwareUtcTime

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
AuditReader = allow(Role.admin, Role.auditor)


@router.get("", response_model=Page[AuditEventPublic])
def list_audit_events(
    session: ReadSession,
    _actor: AuditReader,
    page: Annotated[PageParams, Depends(page_params)],
    actor: Annotated[str | None, Query(description="e.g. token:Jo Bloggs or cli:root")] = None,
    action: Annotated[str | None, Query(description="e.g. person.create")] = None,
    object_type: str | None = None,
    object_id: str | None = None,
    since: AwareUtcTime | None = None,
    until: AwareUtcTime | None = None,
) -> Page[AuditEventPublic]:
    """Newest first."""
    return service.list_events(
        session,
        page,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since=since,
        until=until,
    )


@router.get("/verify", response_model=ChainReport)
def verify_audit_chain(session: ReadSession, _actor: AuditReader) -> ChainReport:
    """Recomputes every link of the chain and names the first broken one."""
    return service.verify_chain(session)
