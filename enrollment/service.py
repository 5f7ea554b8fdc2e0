"""Enrolment: tokens, the checks a device must pass to enrol, its identity certificate, revocation and the CRL."""

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlmodel import Session, col, select

from enrollment import apple_profile, scep
from enrollment.ca import CertificateAuthority, CSRError, IssuedCertificate
from enrollment.models import (
    AppleIdentity,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    EnrollRequest,
    EnrollResponse,
)
from mdm import desired_state
from mdm.access_policy import service as access_policy
from mdm.actor import Actor
from mdm.audit.service import record
from mdm.categories import PERSONAL, SCHOOL_OWNED, Category, Platform
from mdm.commands import service as commands
from mdm.commands.models import Command, CommandType
from mdm.devices import service as devices
from mdm.devices.models import Device, DeviceState, Protocol
from mdm.errors import Conflict, Invalid, NotFound, ProblemError
from mdm.hooks import AppleClaim
from mdm.ids import new_id, utcnow
from mdm.pagination import Page, PageParams, paginate
from mdm.people import service as people
from mdm.sealing import Sealer
from mdm.webhooks import service as webhooks
from profiles import service as profiles

TOKEN_PREFIX = "enr_"  # noqa: S105 (a public prefix that tells the two kinds of token apart, not a secret)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def enroll_url(base_url: str, secret: str) -> str:
    return f"{base_url}/api/v1/enroll?token={secret}"


def token_status(token: EnrollmentToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    if token.uses >= token.max_uses:
        return "used_up"
    return "active"


def to_public(token: EnrollmentToken) -> EnrollmentTokenPublic:
    return EnrollmentTokenPublic.model_validate({**token.model_dump(), "status": token_status(token, utcnow())})


# --- Tokens ----------------------------------------------------------------------------------------


def create_token(
    session: Session, data: EnrollmentTokenCreate, actor: Actor, base_url: str, sealer: Sealer
) -> EnrollmentTokenCreated:
    if data.person_id is not None:
        people.require_person(session, data.person_id)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = utcnow()
    token = EnrollmentToken.model_validate(
        {
            **data.model_dump(exclude={"expires_in_hours"}),
            "id": new_id(),
            "token_hash": _hash(secret),
            "sealed_token": sealer.seal(secret),
            "expires_at": now + timedelta(hours=data.expires_in_hours),
            "created_at": now,
            "created_by": actor.label,
        }
    )
    session.add(token)
    summary = data.model_dump(mode="json")
    record(session, actor, "enrollment_token.create", "enrollment_token", token.id, summary)
    return EnrollmentTokenCreated(
        **to_public(token).model_dump(), token=secret, enroll_url=enroll_url(base_url, secret)
    )


def get_token(session: Session, token_id: str) -> EnrollmentToken:
    token = session.get(EnrollmentToken, token_id)
    if token is None:
        raise NotFound("enrolment token", token_id)
    return token


def list_tokens(session: Session, page: PageParams, active_only: bool = False) -> Page[EnrollmentTokenPublic]:
    statement = select(EnrollmentToken)
    if active_only:
        statement = statement.where(
            col(EnrollmentToken.revoked_at).is_(None),
            EnrollmentToken.expires_at > utcnow(),
            EnrollmentToken.uses < EnrollmentToken.max_uses,
        )
    return paginate(session, statement, EnrollmentToken.id, page, lambda rows: [to_public(t) for t in rows])


def revoke_token(session: Session, token_id: str, actor: Actor) -> EnrollmentToken:
    return _revoke(session, get_token(session, token_id), actor)


def _revoke(session: Session, token: EnrollmentToken, actor: Actor) -> EnrollmentToken:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        token.sealed_token = None  # nothing left to print
        session.add(token)
        record(session, actor, "enrollment_token.revoke", "enrollment_token", token.id, {})
    return token


def revoke_people_tokens(session: Session, person_ids: Collection[str], actor: Actor) -> dict[str, list[str]]:
    """For leavers: every open token tied to these people stops working; the ids revoked, by person."""
    tokens = session.exec(
        select(EnrollmentToken)
        .where(col(EnrollmentToken.person_id).in_(person_ids), col(EnrollmentToken.revoked_at).is_(None))
        .order_by(col(EnrollmentToken.created_at))
    ).all()
    revoked: dict[str, list[str]] = defaultdict(list)
    for token in tokens:
        revoked[str(token.person_id)].append(_revoke(session, token, actor).id)
    return revoked


def token_link(session: Session, token_id: str, base_url: str, sealer: Sealer) -> str:
    """The enrolment link again, for its QR code; refused once the token can no longer enrol anything."""
    token = get_token(session, token_id)
    state = token_status(token, utcnow())
    if state != "active" or token.sealed_token is None:
        raise ProblemError(410, f"This enrolment token is {state.replace('_', ' ')}: make a new one.")
    return enroll_url(base_url, sealer.open(token.sealed_token))


# --- Enrolment -------------------------------------------------------------------------------------


def _usable_token(session: Session, secret: str) -> EnrollmentToken:
    token = _token_by_secret(session, secret)
    if token is None:
        raise ProblemError(401, "This enrolment token is not one the school issued. Check the QR code or link.")
    _refuse_unusable(token)
    return token


def _token_by_secret(session: Session, secret: str, *, lock: bool = True) -> EnrollmentToken | None:
    # Locked when it is about to be used, so two devices cannot both take a token's last use.
    statement = select(EnrollmentToken).where(EnrollmentToken.token_hash == _hash(secret))
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return session.exec(statement).first()


def _refuse_unusable(token: EnrollmentToken) -> None:
    state = token_status(token, utcnow())
    if state == "revoked":
        raise ProblemError(410, "This enrolment token has been revoked. Ask IT for a new one.")
    if state == "expired":
        raise ProblemError(
            410, f"This enrolment token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC. Ask IT for a new one."
        )
    if state == "used_up":
        raise Conflict(f"This enrolment token has been used for all {token.max_uses} device(s) it allows.")


def _check_policy(session: Session, category: Category, aup_accepted: bool) -> None:
    rule = access_policy.get_rule(session, category)
    if not rule.allowed:
        raise ProblemError(
            403,
            f"The school's access policy does not allow {category.value.replace('_', ' ')} devices in school, "
            "so this device cannot be enrolled.",
        )
    if category in PERSONAL and not aup_accepted:
        raise Invalid(
            "A personal device can only be enrolled once its user accepts the acceptable use policy.",
            [{"field": "aup_accepted", "message": "must be true for personal devices"}],
        )


def _existing_device(session: Session, request: EnrollRequest, token: EnrollmentToken) -> Device | None:
    serial = request.device.serial
    device = devices.find_by_serial(session, serial) if serial else None
    if device is None:
        return None
    device = devices.lock_for_update(session, device.id)
    _check_rebinding(device, token)
    return device


def _check_rebinding(device: Device, token: EnrollmentToken) -> None:
    """A serial is printed on the box, so it proves nothing: binding to a known device needs the right token.

    The token must be for the device's own category and person; a device with a live identity needs
    exactly its person (or none, for shared stock); a held or leaving device is never touched.
    """
    if device.held:
        raise Conflict(
            f"This device is held ({device.held_reason}); it cannot be enrolled again until IT releases the hold."
        )
    if device.state == DeviceState.exiting.value:
        raise Conflict("This device is being offboarded; finish its exit before enrolling it again.")
    if device.category != token.category:
        raise Conflict(
            f"This device is registered as {device.category} but the token is for {token.category}. "
            "Use a token of the device's category."
        )
    live_identity = device.state == DeviceState.enrolled.value
    someone_else = device.person_id is not None and token.person_id not in (None, device.person_id)
    if someone_else or (live_identity and token.person_id != device.person_id):
        raise Conflict(
            "This device is enrolled for another person (or for none): enrol it again with a token made "
            "for the device's own person, or ask IT."
        )


def enroll(
    session: Session, request: EnrollRequest, ca: CertificateAuthority, base_url: str, validity_days: int
) -> EnrollResponse:
    token = _usable_token(session, request.token)
    category = Category(token.category)
    _check_policy(session, category, request.aup_accepted)
    try:
        ca.validate_csr(request.csr)
    except CSRError as exc:
        raise Invalid(
            f"The certificate signing request was refused: {exc.detail}", [{"field": "csr", "message": exc.detail}]
        ) from exc
    device = _existing_device(session, request, token)
    previous_state = device.state if device else None
    device = _bind_device(session, device, request, token, category)
    issued = ca.issue_device_certificate(request.csr, device.id, validity_days)
    devices.add_certificate(
        session, device.id, issued.pem, issued.serial_number, issued.fingerprint_sha256, issued.not_after
    )
    token.uses += 1
    session.add(token)
    actor = Actor(kind="enrolment-token", id=token.id, name=token.id)
    summary = {
        "serial": device.serial,
        "platform": device.platform,
        "category": category.value,
        "previous_state": previous_state,
        "certificate_serial": format(issued.serial_number, "x"),
        # Older certificates stay live until this one signs its first request (see the channel).
        "superseding": previous_state == DeviceState.enrolled.value,
        "aup_accepted": request.aup_accepted,
    }
    record(session, actor, "device.enroll", "device", device.id, summary)
    _announce_enrolled(session, device)
    return EnrollResponse(
        device_id=device.id,
        certificate=issued.pem,
        ca_certificates=[ca.certificate_pem],
        checkin_url=f"{base_url}/api/v1/devices/{device.id}/checkin",
    )


def _announce_enrolled(session: Session, device: Device) -> None:
    """Whatever the protocol: the device gets its desired state, and the school's systems hear of it."""
    desired_state.devices_changed(session, device_ids=[device.id])
    payload = {
        "device_id": device.id,
        "serial": device.serial,
        "category": device.category,
        "person_id": device.person_id,
    }
    webhooks.emit(session, "device.enrolled", payload)


def _bind_device(
    session: Session, device: Device | None, request: EnrollRequest, token: EnrollmentToken, category: Category
) -> Device:
    now = utcnow()
    if device is None:
        device = Device(
            id=new_id(),
            serial=request.device.serial or None,
            platform=request.device.platform.value,
            category=category.value,
            state=DeviceState.enrolled.value,
            created_at=now,
            updated_at=now,
        )
    device.platform = request.device.platform.value
    device.model = request.device.model or device.model
    device.name = request.device.name or device.name
    device.os_version = request.device.os_version or device.os_version
    device.category = category.value
    device.person_id = token.person_id or (device.person_id if category in SCHOOL_OWNED else None)
    device.state = DeviceState.enrolled.value
    device.enrolled_at = now
    device.aup_accepted_at = now if request.aup_accepted else None
    device.updated_at = now
    session.add(device)
    session.flush()
    return device


# --- Apple devices: the enrolment profile and the SCEP server's identities ------------------------


def profile_token_by_id(session: Session, token_id: str, sealer: Sealer) -> tuple[EnrollmentToken, str]:
    """For staff: the token and its secret, refused as `POST /api/v1/enroll` would refuse the token."""
    token = get_token(session, token_id)
    _refuse_unusable(token)
    if token.sealed_token is None:
        raise ProblemError(410, "This enrolment token's secret is no longer kept: make a new token.")
    return token, sealer.open(token.sealed_token)


def profile_token_by_secret(session: Session, secret: str) -> EnrollmentToken:
    """For a device's browser: the token is the credential; unknown is 404. A download uses nothing up."""
    token = _token_by_secret(session, secret, lock=False)
    if token is None:
        # The detail never repeats the secret: a wrong link may still be close to a real one.
        raise ProblemError(404, "There is no enrolment profile at this link. Check the QR code or link.")
    _refuse_unusable(token)
    return token


def signed_enrolment_profile(
    token: EnrollmentToken, secret: str, topic: str | None, base_url: str, signer: object, ca_certificate_pem: str
) -> bytes:
    """The enrolment .mobileconfig for `token`, signed like every profile; 409 while no push topic is known."""
    if topic is None:
        raise Conflict(
            "No Apple push certificate is loaded, so Apple devices cannot be enrolled yet: run "
            "`mdm apple push-cert load --cert push.pem --key push.key` first."
        )
    personal = Category(token.category) in PERSONAL
    document = apple_profile.enrolment_profile(token.id, secret, topic, base_url, personal=personal)
    return profiles.signed_configuration(document, signer, ca_certificate_pem)


def issue_apple_identity(
    session: Session, request: scep.CertificateRequest, ca: CertificateAuthority, validity_days: int
) -> IssuedCertificate:
    """SCEP's PKCSReq: the challenge is an enrolment token, checked as `POST /api/v1/enroll` checks it.

    The identity waits (AppleIdentity) for the device to claim it at Authenticate, where the token's
    category and person are applied. Installing the profile counts as accepting the acceptable use
    policy, which a personal device's profile says in its description. Refusals raise ScepFailure.
    """
    token = _scep_token(session, request.challenge)
    try:
        _check_policy(session, Category(token.category), aup_accepted=True)
        ca.validate_csr(request.csr_pem)
    except CSRError as exc:
        raise scep.ScepFailure(scep.FailInfo.BAD_REQUEST, f"The CSR was refused: {exc.detail}", 422) from exc
    except ProblemError as exc:
        raise scep.ScepFailure(scep.FailInfo.BAD_REQUEST, exc.detail, exc.status) from exc
    issued = ca.issue_apple_identity(request.csr_pem, validity_days)
    serial = format(issued.serial_number, "x")
    now = utcnow()
    session.add(
        AppleIdentity(
            serial_number=serial,
            certificate_pem=issued.pem,
            token_id=token.id,
            issued_at=now,
            not_after=issued.not_after,
        )
    )
    token.uses += 1
    session.add(token)
    actor = Actor(kind="enrolment-token", id=token.id, name=token.id)
    summary = {"category": token.category, "person_id": token.person_id, "not_after": issued.not_after.isoformat()}
    record(session, actor, "apple.identity_issued", "apple_identity", serial, summary)
    return issued


def _scep_token(session: Session, challenge: str | None) -> EnrollmentToken:
    if not challenge:
        raise scep.ScepFailure(scep.FailInfo.BAD_REQUEST, "The request carries no challenge password.", 401)
    token = _token_by_secret(session, challenge)
    if token is None:
        raise scep.ScepFailure(
            scep.FailInfo.BAD_REQUEST, "The challenge password is not an enrolment token the school issued.", 401
        )
    try:
        _refuse_unusable(token)
    except ProblemError as exc:
        # badTime is SCEP's word for "no longer valid"; a revoked or used-up token is a bad request.
        expired = token_status(token, utcnow()) == "expired"
        fail_info = scep.FailInfo.BAD_TIME if expired else scep.FailInfo.BAD_REQUEST
        raise scep.ScepFailure(fail_info, exc.detail, exc.status) from exc
    return token


# --- Revocation and the CRL ------------------------------------------------------------------------


def revoke_device(session: Session, device_id: str, reason: str, actor: Actor) -> dict[str, object]:
    """Shuts a device out at once: its certificates are revoked and listed by the next CRL."""
    device = devices.lock_for_update(session, device_id)
    serials = devices.revoke_certificates(session, device.id, reason)
    crl_number = devices.current_crl_number(session)
    record(
        session,
        actor,
        "device.revoke",
        "device",
        device.id,
        {"reason": reason, "certificates": serials, "crl_number": crl_number},
    )
    return {"device_id": device.id, "revoked_certificates": serials, "crl_number": crl_number}


def crl_der(session: Session, ca: CertificateAuthority) -> bytes:
    # Signed at the number stored with the revocations: a CRL never claims a number its contents don't match.
    return ca.build_crl(devices.revoked_certificates(session), devices.current_crl_number(session))


# --- When a device lets go ------------------------------------------------------------------------

UNENROLLING = {CommandType.EraseDevice.value: "erased", CommandType.RemoveMDM.value: "MDM removed"}


def on_command_result(session: Session, command: Command) -> None:
    """A device that acknowledged an erase or the removal of MDM holds no identity any more.

    Its certificate is revoked (the CRL lists it, the channel refuses it) and it leaves management:
    a wiped school device goes back to stock, unassigned; any other ends retired.
    """
    if command.status != "acknowledged" or command.type not in UNENROLLING:
        return
    device = devices.lock_for_update(session, command.device_id)
    reason = UNENROLLING[command.type]
    serials = devices.revoke_certificates(session, device.id, reason)
    crl_number = devices.current_crl_number(session)
    back_to_stock = command.type == CommandType.EraseDevice.value and Category(device.category) in SCHOOL_OWNED
    state = DeviceState.in_stock if back_to_stock else DeviceState.retired
    devices.set_state(session, device, state, unassign=back_to_stock)
    commands.cancel_all_open(session, device.id, f"not run: the device was {reason}")
    actor = Actor(kind="device", id=device.id, name=device.id)
    summary = {"command_id": command.id, "state": state.value, "certificates": serials, "crl_number": crl_number}
    record(session, actor, f"device.{reason.replace(' ', '_').lower()}", "device", device.id, summary)


# --- Apple devices: binding the identity SCEP issued, at Authenticate -------------------------------

PLATFORM_PREFIXES = (("iPad", Platform.ipados), ("iPhone", Platform.ios), ("iPod", Platform.ios))


def _apple_platform(claim: AppleClaim) -> Platform:
    """From ProductName (iPad8,1; iPhone14,2; MacBookPro18,1; iMac14,2): a device that says nothing is a Mac."""
    product = claim.product_name or claim.model or ""
    return next((platform for prefix, platform in PLATFORM_PREFIXES if product.startswith(prefix)), Platform.macos)


class AppleEnrolments:
    """Finishes an Apple device's enrolment (mdm.hooks.AppleEnrolment): SCEP issued the identity against a
    token; the device's first Authenticate says who it is, under the agent's enrolment rules; its
    TokenUpdate makes it manageable, so only then is it enrolled."""

    def bind(self, session: Session, certificate_serial: str, claim: AppleClaim) -> str:
        identity = _apple_identity(session, certificate_serial)
        if identity.udid is not None:
            if identity.udid != claim.udid:
                raise ProblemError(401, "This identity belongs to another device; each device enrols with its own.")
            return identity.device_id  # type: ignore[return-value]  # Authenticate again: nothing changes
        token = session.exec(
            select(EnrollmentToken).where(EnrollmentToken.id == identity.token_id).with_for_update()
        ).one()
        if token.revoked_at is not None:
            raise ProblemError(403, "The enrolment token behind this identity has been revoked. Ask IT for a new one.")
        category = Category(token.category)
        # Installing the enrolment profile accepted the AUP (the profile says so): SCEP checked it that way too.
        _check_policy(session, category, aup_accepted=True)
        device = _apple_device_to_bind(session, claim, token)
        previous_state = device.state if device else None
        device = _bind_apple_device(session, device, claim, token, category)
        certificate = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
        devices.add_certificate(
            session,
            device.id,
            identity.certificate_pem,
            certificate.serial_number,
            certificate.fingerprint(hashes.SHA256()).hex(),
            identity.not_after,
        )
        identity.device_id, identity.udid, identity.bound_at = device.id, claim.udid, utcnow()
        session.add(identity)
        actor = Actor(kind="enrolment-token", id=token.id, name=token.id)
        summary = {
            "udid": claim.udid,
            "serial": device.serial,
            "category": category.value,
            "previous_state": previous_state,
            "certificate_serial": identity.serial_number,
        }
        record(session, actor, "device.apple_authenticate", "device", device.id, summary)
        return device.id

    def complete(self, session: Session, device_id: str) -> None:
        device = devices.lock_for_update(session, device_id)
        if device.state != DeviceState.registered.value:
            return  # a later TokenUpdate (a new push token) enrols nothing again
        now = utcnow()
        device.state, device.enrolled_at, device.updated_at = DeviceState.enrolled.value, now, now
        session.add(device)
        actor = Actor(kind="device", id=device.id, name=device.id)
        summary = {
            "serial": device.serial,
            "platform": device.platform,
            "category": device.category,
            "protocol": "apple",
        }
        record(session, actor, "device.enroll", "device", device.id, summary)
        _announce_enrolled(session, device)

    def check_out(self, session: Session, device_id: str) -> None:
        device = devices.lock_for_update(session, device_id)
        # The device deleted its identity with the profile: nobody may sign with it any more.
        serials = devices.revoke_certificates(session, device.id, "MDM profile removed on the device (CheckOut)")
        personal = Category(device.category) in PERSONAL
        if personal:
            devices.set_state(session, device, DeviceState.retired)
            commands.cancel_all_open(session, device.id, "not run: the MDM profile was removed on the device")
        actor = Actor(kind="device", id=device.id, name=device.id)
        summary = {"state": device.state, "certificates": serials, "crl_number": devices.current_crl_number(session)}
        record(session, actor, "device.checked_out", "device", device.id, summary)
        if not personal:
            webhooks.emit(
                session,
                "device.unenrolled",
                {"device_id": device.id, "serial": device.serial, "category": device.category, "reason": "CheckOut"},
            )


def _apple_identity(session: Session, certificate_serial: str) -> AppleIdentity:
    statement = select(AppleIdentity).where(AppleIdentity.serial_number == certificate_serial).with_for_update()
    identity = session.exec(statement.execution_options(populate_existing=True)).first()
    if identity is None:
        raise ProblemError(
            401, "This certificate was not issued to enrol an Apple device: install the enrolment profile."
        )
    return identity


def _apple_device_to_bind(session: Session, claim: AppleClaim, token: EnrollmentToken) -> Device | None:
    """The device this UDID (or, the first time, this serial) already is, locked and checked as the agent's."""
    device_id = session.exec(
        select(AppleIdentity.device_id)
        .where(AppleIdentity.udid == claim.udid, col(AppleIdentity.device_id).is_not(None))
        .order_by(col(AppleIdentity.bound_at).desc())
    ).first()
    if device_id is None and claim.serial:
        found = devices.find_by_serial(session, claim.serial.upper())
        device_id = found.id if found else None
    if device_id is None:
        return None
    device = devices.lock_for_update(session, device_id)
    _check_rebinding(device, token)
    _refuse_a_second_live_identity(session, device)
    return device


def _refuse_a_second_live_identity(session: Session, device: Device) -> None:
    """An enrolled device keeps the identity it enrolled with: another Authenticate for it is refused.

    A device still `registered` (it authenticated but never sent TokenUpdate, e.g. the profile failed to
    install) may start again: its unfinished identity is revoked. A device that really was reset is
    revoked by IT first (POST /api/v1/devices/{id}/revoke), which lets it enrol again.
    """
    now = utcnow()
    live = [c for c in devices.identity_candidates(session, device.id) if c.revoked_at is None and c.not_after > now]
    if not live:
        return
    if device.state == DeviceState.registered.value:
        devices.revoke_certificates(session, device.id, "superseded: the device authenticated again before enrolling")
        return
    raise Conflict(
        "This device is already enrolled with another identity. If it was reset, revoke it first "
        f"(POST /api/v1/devices/{device.id}/revoke) and enrol it again."
    )


def _bind_apple_device(
    session: Session, device: Device | None, claim: AppleClaim, token: EnrollmentToken, category: Category
) -> Device:
    now = utcnow()
    if device is None:
        taken = claim.serial and devices.find_by_serial(session, claim.serial.upper())
        device = Device(
            id=new_id(),
            serial=claim.serial.upper() if claim.serial and not taken else None,
            platform=_apple_platform(claim).value,
            category=category.value,
            state=DeviceState.registered.value,
            created_at=now,
            updated_at=now,
        )
    device.protocol = Protocol.apple.value
    device.platform = _apple_platform(claim).value
    device.model = claim.product_name or claim.model or device.model
    device.name = claim.device_name or device.name
    device.os_version = claim.os_version or device.os_version
    device.category = category.value
    device.person_id = token.person_id or (device.person_id if category in SCHOOL_OWNED else None)
    device.state = DeviceState.registered.value  # enrolled at TokenUpdate, once it can be woken
    device.updated_at = now
    session.add(device)
    session.flush()
    return device
