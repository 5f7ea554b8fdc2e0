from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlmodel import select

from mdm.actor import Role
from mdm.audit import service
from mdm.audit.models import AuditEvent, AuditEventPublic, ChainReport
from mdm.dependencies import ReadSession, allow
from mdm.pagination import Page, PageParams, keyset, page_of, page_params
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
    statement = service.filter_events(
        select(AuditEvent),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        since=since,
        until=until,
    )
    rows = session.exec(keyset(statement, AuditEvent.seq, page, descending=True)).all()  # type: ignore[arg-type, call-overload]
    items, cursor = page_of(rows, page, lambda event: event.seq)
    return Page(items=[AuditEventPublic.model_validate(e, from_attributes=True) for e in items], next_cursor=cursor)


@router.get("/verify", response_model=ChainReport)
def verify_audit_chain(session: ReadSession, _actor: AuditReader) -> ChainReport:
    """Recomputes every link of the chain and names the first broken one."""
    return service.verify_chain(session)
