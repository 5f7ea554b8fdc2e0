from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from exit_process import flows, leavers, service
from exit_process.models import CaseStatus, ExitCasePublic, ExitCreate, StepNote
from exit_process.report import CONTENT_SECURITY_POLICY, as_html, evidence
from mdm.actor import Role
from mdm.csv_import import check_media_type
from mdm.database import Database
from mdm.dependencies import READERS, AppSettings, ReadSession, WriteSession, allow, get_database
from mdm.openapi import answered_as
from mdm.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/api/v1/exits", tags=["leavers"])
Openers = allow(Role.admin, Role.technician, Role.integration)
Staff = allow(Role.admin, Role.technician)
Readers = allow(*READERS, Role.integration)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExitCasePublic)
def open_exit(
    data: ExitCreate, session: WriteSession, actor: Openers, settings: AppSettings, response: Response
) -> ExitCasePublic:
    """Offboards every device of a leaver on the leaving date (today if none). `dry_run` shows the plan only."""
    case = flows.open_case(session, data, actor, settings.timezone)
    if data.dry_run:
        response.status_code = status.HTTP_200_OK
    return case


@router.post(
    "/import",
    response_model=leavers.LeaversImportResult,
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}},
)
async def import_leavers(
    request: Request, actor: Openers, database: Annotated[Database, Depends(get_database)], settings: AppSettings
) -> leavers.LeaversImportResult:
    """CSV `external_id,leaving_date,reason`: all lines checked first; any bad line and no case is opened.

    Answers the same counts as the people and devices imports (`created` is the cases opened), with
    how many are `scheduled` for a later date and how many `started` at once.
    """
    check_media_type(request.headers.get("content-type"))
    data = await request.body()

    def run() -> leavers.LeaversImportResult:
        with database.writing() as session:
            return leavers.import_leavers_csv(session, data, actor, settings.timezone, settings.import_max_rows)

    return await run_in_threadpool(run)


@router.get("", response_model=Page[ExitCasePublic])
def list_exits(
    session: ReadSession,
    _actor: Readers,
    page: Annotated[PageParams, Depends(page_params)],
    status_: Annotated[CaseStatus | None, Query(alias="status")] = None,
    person_id: Annotated[str | None, Query(max_length=36)] = None,
) -> Page[ExitCasePublic]:
    return service.list_cases(session, page, status_, person_id)


@router.get("/{case_id}", response_model=ExitCasePublic)
def get_exit(case_id: str, session: ReadSession, _actor: Readers) -> ExitCasePublic:
    return service.case_public(session, service.get_case(session, case_id))


@router.post("/{case_id}/steps/{step_id}/complete", response_model=ExitCasePublic)
def complete_step(case_id: str, step_id: str, data: StepNote, session: WriteSession, actor: Staff) -> ExitCasePublic:
    """Confirms a hand-in, or, once the case is overdue, forces the rest of a device's steps (revoke and retire)."""
    return flows.complete_step(session, case_id, step_id, data.note, actor)


@router.post("/{case_id}/steps/{step_id}/retry", response_model=ExitCasePublic)
def retry_step(case_id: str, step_id: str, session: WriteSession, actor: Staff) -> ExitCasePublic:
    """Sends a failed step's commands again."""
    return flows.retry_step(session, case_id, step_id, actor)


@router.post("/{case_id}/cancel", response_model=ExitCasePublic)
def cancel_exit(case_id: str, session: WriteSession, actor: Openers) -> ExitCasePublic:
    """Calls off an exit that has not started (the leaver is staying after all)."""
    return service.cancel_case(session, case_id, actor)


@router.get(
    "/{case_id}/report",
    response_model=None,
    responses=answered_as("application/json", "text/html", description="The evidence, as JSON or a page."),
)
def exit_report(
    case_id: str,
    request: Request,
    session: ReadSession,
    _actor: allow(*READERS),
    format_: Annotated[str | None, Query(alias="format", pattern="^(json|html)$")] = None,
) -> Response:
    """The evidence, step by step: JSON, or a printable page with `?format=html` (or Accept: text/html)."""
    report = evidence(session, service.get_case(session, case_id))
    wants_html = format_ == "html" or (format_ is None and "text/html" in request.headers.get("accept", ""))
    if wants_html:
        return HTMLResponse(as_html(report), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
    return JSONResponse(report)
