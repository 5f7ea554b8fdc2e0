from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from starlette.concurrency import run_in_threadpool

from mdm.actor import Role
from mdm.categories import Category
from mdm.commands import service as commands
from mdm.csv_import import ImportResult, check_media_type
from mdm.database import Database
from mdm.dependencies import READERS, AppSettings, ReadSession, WriteSession, allow, get_database
from mdm.devices import service
from mdm.devices.models import ComplianceStatus, DevicePublic, DeviceRegister, DeviceState, HoldChange
from mdm.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
Staff = allow(Role.admin, Role.technician)
Readers = allow(*READERS)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
def register_device(data: DeviceRegister, session: WriteSession, actor: Staff) -> DevicePublic:
    """Pre-registers a school-owned device by serial (state `registered`); enrolment binds to it later."""
    return service.register_device(session, data, actor)


@router.post(
    "/import",
    response_model=ImportResult,
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}},
)
async def import_devices(
    request: Request, actor: Staff, database: Annotated[Database, Depends(get_database)], settings: AppSettings
) -> ImportResult:
    """CSV with the header `serial,platform,model,category,asset_tag,person_external_id`.

    Upserts by serial, all or nothing: any bad line and the answer is 422 listing each one.
    """
    check_media_type(request.headers.get("content-type"))
    data = await request.body()

    def run() -> ImportResult:
        with database.writing() as session:
            return service.import_devices_csv(session, data, actor, max_rows=settings.import_max_rows)

    return await run_in_threadpool(run)


@router.get("", response_model=Page[DevicePublic])
def list_devices(
    session: ReadSession,
    _actor: Readers,
    page: Annotated[PageParams, Depends(page_params)],
    state: DeviceState | None = None,
    category: Category | None = None,
    compliance: ComplianceStatus | None = None,
    person_id: Annotated[str | None, Query(max_length=36)] = None,
    serial: Annotated[str | None, Query(max_length=100)] = None,
) -> Page[DevicePublic]:
    return service.list_devices(
        session, page, state=state, category=category, compliance=compliance, person_id=person_id, serial=serial
    )


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: ReadSession, _actor: Readers) -> DevicePublic:
    return service.get_device(session, device_id)


@router.put("/{device_id}/hold", response_model=DevicePublic)
def set_hold(device_id: str, change: HoldChange, session: WriteSession, actor: Staff) -> DevicePublic:
    """Hold a device (confiscated, legal hold): it is never erased while held. `{"held": false}` releases it."""
    device = service.set_hold(session, device_id, change, actor)
    if device.held:
        commands.cancel_erase_on_hold(session, device_id, actor)
    return service.get_device(session, device_id)
