from typing import Annotated

from fastapi import APIRouter, Depends

from mdm.actor import Role
from mdm.audit import service
from mdm.audit.models import AuditEventPublic, AuditQuery, ChainReport
from mdm.dependencies import ReadSession, allow
from mdm.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
AuditReader = allow(Role.admin, Role.auditor)


@router.get("", response_model=Page[AuditEventPublic])
def list_audit_events(
    session: ReadSession,
    _actor: AuditReader,
    page: Annotated[PageParams, Depends(page_params)],
    query: Annotated[AuditQuery, Depends()],
) -> Page[AuditEventPublic]:
    """Newest first."""
    return service.list_events(session, page, query)


@router.get("/verify", response_model=ChainReport)
def verify_audit_chain(session: ReadSession, _actor: AuditReader) -> ChainReport:
    """Recomputes every link of the chain and names the first broken one."""
    return service.verify_chain(session)
