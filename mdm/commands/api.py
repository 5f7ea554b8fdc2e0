"""Commands as staff see them: the history of a device and the few a technician sends by hand."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from mdm.actor import Role
from mdm.commands import service
from mdm.commands.models import CommandPublic, CommandStatus, TechnicianCommand
from mdm.dependencies import READERS, ReadSession, WriteSession, allow
from mdm.pagination import Page, PageParams, page_params

router = APIRouter(prefix="/api/v1/devices", tags=["commands"])
Staff = allow(Role.admin, Role.technician)


@router.get("/{device_id}/commands", response_model=Page[CommandPublic])
def command_history(
    device_id: str,
    session: ReadSession,
    _actor: allow(*READERS),
    page: Annotated[PageParams, Depends(page_params)],
    status_: Annotated[CommandStatus | None, Query(alias="status")] = None,
) -> Page[CommandPublic]:
    """Every command recorded for the device, oldest first, with its status."""
    return service.list_history(session, device_id, page, status_)


@router.post("/{device_id}/commands", status_code=status.HTTP_201_CREATED, response_model=CommandPublic)
def send_command(device_id: str, data: TechnicianCommand, session: WriteSession, actor: Staff) -> CommandPublic:
    """Lock a device (with a message on its screen) or erase it (`"confirm": true`; never while held)."""
    command = service.send_technician_command(session, device_id, data, actor)
    return CommandPublic.model_validate(command, from_attributes=True)


@router.post("/{device_id}/commands/{command_id}/cancel", response_model=CommandPublic)
def cancel_command(device_id: str, command_id: str, session: WriteSession, actor: Staff) -> CommandPublic:
    """Cancels a command the device has not answered yet."""
    command = service.cancel_by_staff(session, device_id, command_id, actor)
    return CommandPublic.model_validate(command, from_attributes=True)
