from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status

from mdm.actor import Actor, Role
from mdm.channel.agent.dependencies import DeviceOrRoles
from mdm.dependencies import READERS, AppSealer, ReadSession, WriteSession, allow
from mdm.devices import service as devices
from mdm.errors import NotFound
from mdm.openapi import answered_as
from profiles import reconciler, service
from profiles.models import AppCreate, AppPublic, AppUpdate, DesiredState, ProfileCreate, ProfilePublic, ProfileUpdate
from profiles.render import MOBILECONFIG_MEDIA_TYPE

router = APIRouter(tags=["profiles and apps"])
Admin = allow(Role.admin)
Readers = allow(*READERS)


@router.post("/api/v1/profiles", status_code=status.HTTP_201_CREATED, response_model=ProfilePublic)
def create_profile(data: ProfileCreate, session: WriteSession, actor: Admin, sealer: AppSealer) -> ProfilePublic:
    """A profile for the devices in its scope; they receive it at their next check-in."""
    return service.create_profile(session, data, actor, sealer)


@router.get("/api/v1/profiles", response_model=dict[str, list[ProfilePublic]])
def list_profiles(session: ReadSession, _actor: Readers) -> dict[str, list[ProfilePublic]]:
    return {"items": service.list_profiles(session)}


@router.get("/api/v1/profiles/{profile_id}", response_model=ProfilePublic)
def get_profile(profile_id: str, session: ReadSession, _actor: Readers) -> ProfilePublic:
    return service.get_profile(session, profile_id)


@router.put("/api/v1/profiles/{profile_id}", response_model=ProfilePublic)
def update_profile(
    profile_id: str, data: ProfileUpdate, session: WriteSession, actor: Admin, sealer: AppSealer
) -> ProfilePublic:
    """Bumps the version; devices in scope get the new version, devices leaving the scope lose it."""
    return service.update_profile(session, profile_id, data, actor, sealer)


@router.delete("/api/v1/profiles/{profile_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_profile(profile_id: str, session: WriteSession, actor: Admin) -> Response:
    """Removes the profile from every device that has it."""
    service.delete_profile(session, profile_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/api/v1/apps", status_code=status.HTTP_201_CREATED, response_model=AppPublic)
def create_app(data: AppCreate, session: WriteSession, actor: Admin) -> AppPublic:
    """A school app: `licence` "school" draws from a pool of `licences_total`, "free" has none."""
    return service.create_app(session, data, actor)


@router.get("/api/v1/apps", response_model=dict[str, list[AppPublic]])
def list_apps(session: ReadSession, _actor: Readers) -> dict[str, list[AppPublic]]:
    return {"items": service.list_apps(session)}


@router.get("/api/v1/apps/{app_id}", response_model=AppPublic)
def get_app(app_id: str, session: ReadSession, _actor: Readers) -> AppPublic:
    """With `licences_assigned` and `licences_short` (devices that need it but found the pool empty)."""
    return service.get_app(session, app_id)


@router.put("/api/v1/apps/{app_id}", response_model=AppPublic)
def update_app(app_id: str, data: AppUpdate, session: WriteSession, actor: Admin) -> AppPublic:
    return service.update_app(session, app_id, data, actor)


@router.delete("/api/v1/apps/{app_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_app(app_id: str, session: WriteSession, actor: Admin) -> Response:
    """Takes the app out of the catalogue and off every device the school installed it on."""
    service.delete_app(session, app_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/api/v1/devices/{device_id}/profiles/{profile_id}.mobileconfig",
    response_class=Response,
    responses=answered_as(MOBILECONFIG_MEDIA_TYPE, description="The profile, CMS-signed (DER)."),
)
def mobileconfig(
    device_id: str,
    profile_id: str,
    request: Request,
    session: WriteSession,
    actor: Annotated[Actor, Depends(DeviceOrRoles(*READERS))],
    sealer: AppSealer,
) -> Response:
    """The profile as a signed Apple configuration profile (CMS, DER), for the device (signed) or staff.

    Wi-Fi passwords are in it only for the device itself and for admins (whose download is audited as
    `profile.secret_read`); technicians and auditors get it without them.
    """
    devices.require_device(session, device_id)
    profile = service.profile_for_device(session, profile_id)
    if actor.kind == "device" and not service.applies_to(session, profile, device_id):
        raise NotFound("profile for this device", profile_id)
    state = request.app.state
    body = service.signed_mobileconfig(session, profile, actor, sealer, state.profile_signer, state.ca.certificate_pem)
    filename = f"{profile.identifier}-v{profile.version}.mobileconfig"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    return Response(body, media_type=MOBILECONFIG_MEDIA_TYPE, headers=headers)


@router.get("/api/v1/devices/{device_id}/desired-state", response_model=DesiredState)
def desired_state(device_id: str, session: ReadSession, _actor: Readers) -> dict[str, Any]:
    """What the reconciler wants on this device, and which scope or rule brought each item."""
    devices.require_device(session, device_id)
    return reconciler.explain(session, device_id)
