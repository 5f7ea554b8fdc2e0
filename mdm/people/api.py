from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from starlette.concurrency import run_in_threadpool

from mdm.actor import Role
from mdm.csv_import import ImportResult, check_media_type
from mdm.database import Database
from mdm.dependencies import READERS, AppSettings, ReadSession, WriteSession, allow, get_database
from mdm.pagination import Page, PageParams, page_params
from mdm.people import service
from mdm.people.models import PersonCreate, PersonKind, PersonPublic

router = APIRouter(prefix="/api/v1/people", tags=["people"])
Writers = allow(Role.admin, Role.technician, Role.integration)
Readers = allow(*READERS, Role.integration)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PersonPublic)
def create_person(data: PersonCreate, session: WriteSession, actor: Writers) -> PersonPublic:
    """external_id is unique: a second person with the same one is refused with 409."""
    return service.create_person(session, data, actor)


@router.post(
    "/import",
    response_model=ImportResult,
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}},
)
async def import_people(
    request: Request, actor: Writers, database: Annotated[Database, Depends(get_database)], settings: AppSettings
) -> ImportResult:
    """CSV with the header `external_id,kind,display_name,groups,date_of_birth` (groups separated by `;`).

    Upserts by external_id. Every line is checked first: if any is bad, the answer is 422 listing each
    bad line and why, and nothing is written.
    """
    check_media_type(request.headers.get("content-type"))
    data = await request.body()

    def run() -> ImportResult:
        with database.writing() as session:
            return service.import_people_csv(session, data, actor, max_rows=settings.import_max_rows)

    return await run_in_threadpool(run)


@router.get("", response_model=Page[PersonPublic])
def list_people(
    session: ReadSession,
    _actor: Readers,
    page: Annotated[PageParams, Depends(page_params)],
    external_id: Annotated[str | None, Query(max_length=200)] = None,
    kind: PersonKind | None = None,
    group: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[PersonPublic]:
    return service.list_people(session, page, external_id=external_id, kind=kind, group=group)


@router.get("/{person_id}", response_model=PersonPublic)
def get_person(person_id: str, session: ReadSession, _actor: Readers) -> PersonPublic:
    return service.get_person(session, person_id)
