from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status

from enrollment import service
from enrollment.ca import CertificateAuthority
from enrollment.models import (
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    EnrollRequest,
    EnrollResponse,
    RevokeRequest,
)
from enrollment.qr import qr_png, qr_svg
from mdm.actor import Role
from mdm.channel.apple.topic import current_topic
from mdm.dependencies import READERS, AppDatabase, AppSealer, AppSettings, ReadSession, WriteSession, allow
from mdm.errors import problem_documented
from mdm.openapi import answered_as
from mdm.pagination import Page, PageParams, page_params
from mdm.ratelimit import AbuseLimits, client_address
from mdm.settings import Settings

router = APIRouter(tags=["enrolment"])
Staff = allow(Role.admin, Role.technician)


def get_ca(request: Request) -> CertificateAuthority:
    return request.app.state.ca


CA = Annotated[CertificateAuthority, Depends(get_ca)]


@router.post("/api/v1/enrollment-tokens", status_code=status.HTTP_201_CREATED, response_model=EnrollmentTokenCreated)
def create_enrollment_token(
    data: EnrollmentTokenCreate, session: WriteSession, actor: Staff, settings: AppSettings, sealer: AppSealer
) -> EnrollmentTokenCreated:
    """A token for one category (and optionally one person). `max_uses` > 1 enrols a whole cart of stock."""
    return service.create_token(session, data, actor, settings.base_url, sealer)


@router.get("/api/v1/enrollment-tokens", response_model=Page[EnrollmentTokenPublic])
def list_enrollment_tokens(
    session: ReadSession,
    _actor: allow(*READERS),
    page: Annotated[PageParams, Depends(page_params)],
    active: bool = False,
) -> Page[EnrollmentTokenPublic]:
    return service.list_tokens(session, page, active_only=active)


@router.get("/api/v1/enrollment-tokens/{token_id}", response_model=EnrollmentTokenPublic)
def get_enrollment_token(token_id: str, session: ReadSession, _actor: allow(*READERS)) -> EnrollmentTokenPublic:
    return service.to_public(service.get_token(session, token_id))


@router.delete("/api/v1/enrollment-tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_enrollment_token(token_id: str, session: WriteSession, actor: Staff) -> Response:
    service.revoke_token(session, token_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/api/v1/enrollment-tokens/{token_id}/qr.svg",
    response_class=Response,
    responses=answered_as("image/svg+xml", description="The QR code, as SVG."),
)
def enrollment_qr_svg(
    token_id: str, session: ReadSession, _actor: Staff, settings: AppSettings, sealer: AppSealer
) -> Response:
    """The QR code of the enrolment link, to show on screen."""
    link = service.token_link(session, token_id, settings.base_url, sealer)
    return Response(qr_svg(link), media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


@router.get(
    "/api/v1/enrollment-tokens/{token_id}/qr.png",
    response_class=Response,
    responses=answered_as("image/png", description="The QR code, as PNG."),
)
def enrollment_qr_png(
    token_id: str, session: ReadSession, _actor: Staff, settings: AppSettings, sealer: AppSealer
) -> Response:
    """The QR code of the enrolment link, to print."""
    link = service.token_link(session, token_id, settings.base_url, sealer)
    return Response(qr_png(link), media_type="image/png", headers={"Cache-Control": "no-store"})


MOBILECONFIG = "application/x-apple-aspen-config"
_PROFILE_ANSWERS = {
    **answered_as(MOBILECONFIG, description="The signed enrolment profile."),
    409: problem_documented("No Apple push certificate is loaded yet: run `mdm apple push-cert load`."),
}


@router.get(
    "/api/v1/enrollment-tokens/{token_id}/enroll.mobileconfig", response_class=Response, responses=_PROFILE_ANSWERS
)
def enrollment_profile(
    token_id: str, session: ReadSession, _actor: Staff, settings: AppSettings, sealer: AppSealer, request: Request
) -> Response:
    """The token's Apple enrolment profile, to install on an iPad or Mac by hand or through Configurator."""
    token, secret = service.profile_token_by_id(session, token_id, sealer)
    return _profile_response(request, token, secret, current_topic(session), settings)


@router.get("/enroll/{secret}.mobileconfig", response_class=Response, responses=_PROFILE_ANSWERS)
def enrollment_profile_for_device(
    secret: str, session: ReadSession, settings: AppSettings, request: Request
) -> Response:
    """The enrolment profile for a device's browser (the QR code's link); the enrolment token is the credential."""
    token = service.profile_token_by_secret(session, secret)
    return _profile_response(request, token, secret, current_topic(session), settings)


def _profile_response(
    request: Request, token: EnrollmentToken, secret: str, topic: str | None, settings: Settings
) -> Response:
    state = request.app.state
    body = service.signed_enrolment_profile(
        token, secret, topic, settings.base_url, state.profile_signer, state.ca.certificate_pem
    )
    headers = {"Content-Disposition": 'attachment; filename="enrol.mobileconfig"', "Cache-Control": "no-store"}
    return Response(body, media_type=MOBILECONFIG, headers=headers)


@router.post(
    "/api/v1/enroll",
    status_code=status.HTTP_201_CREATED,
    response_model=EnrollResponse,
    responses={429: problem_documented("Too many enrolment attempts, or refused tokens, from this address.")},
)
def enroll(
    data: EnrollRequest, request: Request, database: AppDatabase, ca: CA, settings: AppSettings
) -> EnrollResponse:
    """A device enrols itself: the enrolment token is the credential, the CSR carries its new key."""
    limits: AbuseLimits = request.app.state.abuse_limits
    # The limit is asked before the write transaction opens, so a refused flood takes no database lock.
    with limits.enrolment(client_address(request.scope), data.token), database.writing() as session:
        return service.enroll(session, data, ca, settings.base_url, settings.device_certificate_days)


@router.post("/api/v1/devices/{device_id}/revoke", response_model=dict[str, Any])
def revoke_device(
    device_id: str, data: RevokeRequest, session: WriteSession, actor: allow(Role.admin)
) -> dict[str, Any]:
    """Shuts the device out at once: its certificate is revoked and the CRL lists it."""
    return service.revoke_device(session, device_id, data.reason, actor)


@router.get(
    "/api/v1/pki/ca.pem",
    response_class=Response,
    responses=answered_as("application/x-pem-file", description="The CA certificate, PEM."),
)
def ca_certificate(ca: CA) -> Response:
    """The school's CA certificate (PEM), which every device certificate chains to. Public."""
    return Response(ca.certificate_pem, media_type="application/x-pem-file")


@router.get(
    "/api/v1/pki/crl",
    response_class=Response,
    responses=answered_as("application/pkix-crl", description="The CRL, DER."),
)
def certificate_revocation_list(session: ReadSession, ca: CA) -> Response:
    """Every revoked device certificate (DER), for the Wi-Fi's RADIUS server and other network devices. Public."""
    return Response(
        service.crl_der(session, ca), media_type="application/pkix-crl", headers={"Cache-Control": "no-cache"}
    )
