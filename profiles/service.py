"""Profiles and the app catalogue: what school devices must carry. Every change reconciles the devices."""

from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import delete, exists, func, insert, not_
from sqlmodel import Session, col, select

from mdm.access_policy.models import AccessRule
from mdm.actor import Actor, Role
from mdm.audit.service import record
from mdm.commands import intents
from mdm.commands.intents import intent_of
from mdm.commands.models import Command, CommandType
from mdm.desired_state import DeviceSelector
from mdm.devices.models import Device
from mdm.errors import Conflict, NotFound
from mdm.hooks import AppleAppSource
from mdm.ids import new_id, utcnow
from mdm.inventory import service as inventory
from mdm.inventory.models import DeviceApp
from mdm.people.models import PersonGroup
from mdm.sealing import Sealer
from profiles import stored_payloads
from profiles.models import (
    App,
    AppCreate,
    AppPublic,
    AppUpdate,
    Profile,
    ProfileCreate,
    ProfilePublic,
    ProfileUpdate,
    SchoolInstall,
    Scope,
    ScopeRule,
)
from profiles.payloads import NETWORK_PAYLOAD_TYPES
from profiles.planning import PLATFORM_FAMILY, AppSpec, ProfileSpec, profile_reasons
from profiles.reconciler import Catalogue, batch_facts, desired_for, device_facts, load_catalogue, reconcile
from profiles.render import configuration_profile, plist_bytes, sign_profile

EVERYONE = DeviceSelector(everyone=True)


# --- Payloads for devices: secrets sealed at rest (stored_payloads.py), never returned -------------------


class DeviceProfiles:
    """What the device channel's adapters ask of profiles (mdm.hooks.ProfileRenderer), wired by the bootstrap.

    A profile is rendered when its InstallProfile is delivered, from the profile as it is then: a
    command queued for a version the profile has since left is not sent (the reconciler has queued
    the current one), so a device never installs content that its command's version does not name.
    """

    def __init__(
        self,
        sealer: Callable[[], Sealer],
        signer: Callable[[], Any] | None = None,
        ca_certificate_pem: Callable[[], str] | None = None,
    ) -> None:
        # The data directory's keys, read the first time a secret is opened or a profile signed.
        self._sealer = sealer
        self._signer = signer
        self._ca_certificate_pem = ca_certificate_pem

    def agent_payload(self, session: Session, identifier: str, version: int) -> dict[str, Any] | None:
        profile = _current_profile(session, identifier)
        if profile is None or profile.version != version:
            return None
        return stored_payloads.agent_payload(profile, self._sealer())

    def apple_mobileconfig(self, session: Session, identifier: str, version: int) -> bytes | None:
        profile = _current_profile(session, identifier)
        if profile is None or profile.version != version:
            return None
        if self._signer is None or self._ca_certificate_pem is None:
            raise RuntimeError("DeviceProfiles was built without a profile signer: wire it in mdm.bootstrap.")
        device = Actor(kind="device", id=identifier, name="device")  # the device itself: secrets revealed, not audited
        return signed_mobileconfig(session, profile, device, self._sealer(), self._signer(), self._ca_certificate_pem())

    def apple_app(self, session: Session, identifier: str) -> AppleAppSource | None:
        rows = session.exec(
            select(App.itunes_store_id, App.manifest_url)
            .where(App.identifier == identifier, col(App.deleted_at).is_(None))
            .order_by(col(App.itunes_store_id).is_(None), col(App.manifest_url).is_(None))
        ).first()
        return None if rows is None else AppleAppSource(itunes_store_id=rows[0], manifest_url=rows[1])


def _current_profile(session: Session, identifier: str) -> Profile | None:
    statement = select(Profile).where(Profile.identifier == identifier, col(Profile.deleted_at).is_(None))
    return session.exec(statement).first()


def signed_mobileconfig(
    session: Session, profile: Profile, actor: Actor, sealer: Sealer, signer: Any, ca_certificate_pem: str
) -> bytes:
    """The profile as a CMS-signed Apple configuration profile.

    A Wi-Fi key goes only to the device itself and to admins, and an admin's copy is audited (the
    event names the profile, never the key). Technicians and auditors get the profile without it: a
    device installing that copy asks for the password, so it still serves to check or hand-install.
    """
    reveal = actor.kind == "device" or actor.role == Role.admin
    payloads = stored_payloads.typed_payloads(profile, sealer)
    if not reveal:
        payloads = [stored_payloads.without_secret(p) for p in payloads]
    elif actor.kind != "device" and stored_payloads.has_secret(profile):
        record(session, actor, "profile.secret_read", "profile", profile.id, {"version": profile.version})
    document = configuration_profile(profile.identifier, profile.name, profile.version, payloads, ca_certificate_pem)
    return signed_configuration(document, signer, ca_certificate_pem)


def signed_configuration(document: dict[str, Any], signer: Any, ca_certificate_pem: str) -> bytes:
    """Any Configuration dictionary as a signed .mobileconfig, as profiles' own are (enrolment's uses it)."""
    return sign_profile(plist_bytes(document), signer, ca_certificate_pem)


def applies_to(session: Session, profile: Profile, device_id: str) -> bool:
    """Whether the profile is in the device's desired state (a device may fetch only its own)."""
    spec = next((p for p in load_catalogue(session).profiles if p.id == profile.id), None)
    facts = device_facts(session, device_id)
    return spec is not None and facts is not None and profile_reasons(facts, spec) is not None


# --- Scopes ----------------------------------------------------------------------------------------


def _write_scope(session: Session, owner_id: str, rules: dict[str, list[str]]) -> None:
    session.execute(delete(ScopeRule).where(ScopeRule.owner_id == owner_id))  # type: ignore[arg-type]
    rows = [
        {"owner_id": owner_id, "kind": kind, "value": value} for kind, values in rules.items() for value in set(values)
    ]
    if rows:
        session.execute(insert(ScopeRule), rows)


def _scope_of(session: Session, owner_id: str) -> dict[str, list[str]]:
    scope: dict[str, list[str]] = {"category": [], "group": [], "network": []}
    statement = select(ScopeRule.kind, ScopeRule.value).where(ScopeRule.owner_id == owner_id).order_by(ScopeRule.value)
    for kind, value in session.exec(statement):
        scope[kind].append(value)
    return scope


def _profile_scope_rules(scope: Scope) -> dict[str, list[str]]:
    return {
        "category": [c.value for c in scope.categories],
        "group": list(scope.groups),
        "network": list(scope.network_access),
    }


# --- Profiles --------------------------------------------------------------------------------------


def _live_profile(session: Session, profile_id: str) -> Profile:
    profile = session.get(Profile, profile_id)
    if profile is None or profile.deleted_at is not None:
        raise NotFound("profile", profile_id)
    return profile


def profile_public(session: Session, profile: Profile) -> ProfilePublic:
    scope = _scope_of(session, profile.id)
    return ProfilePublic(
        id=profile.id,
        name=profile.name,
        identifier=profile.identifier,
        version=profile.version,
        payloads=stored_payloads.redacted(profile.payloads),
        scope=Scope(categories=scope["category"], groups=scope["group"], network_access=scope["network"]),  # type: ignore[arg-type]
        created_at=profile.created_at,
        updated_at=profile.updated_at,
    )


def create_profile(session: Session, data: ProfileCreate, actor: Actor, sealer: Sealer) -> ProfilePublic:
    existing = session.exec(select(Profile).where(Profile.identifier == data.identifier)).first()
    if existing is not None:
        raise Conflict(f"A profile with identifier {data.identifier} exists already.", existing_id=existing.id)
    now = utcnow()
    profile = Profile(
        id=new_id(),
        identifier=data.identifier,
        name=data.name,
        version=1,
        payloads=stored_payloads.sealed(data.payloads, sealer),
        is_network=any(p.type in NETWORK_PAYLOAD_TYPES for p in data.payloads),
        created_at=now,
        updated_at=now,
    )
    session.add(profile)
    session.flush()
    _write_scope(session, profile.id, _profile_scope_rules(data.scope))
    public = profile_public(session, profile)
    record(
        session,
        actor,
        "profile.create",
        "profile",
        profile.id,
        public.model_dump(mode="json", include={"name", "identifier", "payloads", "scope"}),
    )
    reconcile(session, EVERYONE)
    return public


def update_profile(
    session: Session, profile_id: str, data: ProfileUpdate, actor: Actor, sealer: Sealer
) -> ProfilePublic:
    profile = _live_profile(session, profile_id)
    before = profile_public(session, profile)
    if data.name is not None:
        profile.name = data.name
    if data.payloads is not None:
        profile.payloads = stored_payloads.sealed(data.payloads, sealer)
        profile.is_network = any(p.type in NETWORK_PAYLOAD_TYPES for p in data.payloads)
    if data.scope is not None:
        if data.scope.network_access and not profile.is_network:
            raise Conflict("scope.network_access applies only to profiles with wifi payloads")
        _write_scope(session, profile.id, _profile_scope_rules(data.scope))
    profile.version += 1
    profile.updated_at = utcnow()
    session.add(profile)
    session.flush()
    after = profile_public(session, profile)
    changed = {
        k: {"from": getattr(before, k), "to": getattr(after, k)}
        for k in ("name", "payloads", "scope")
        if getattr(before, k) != getattr(after, k)
    }
    record(session, actor, "profile.update", "profile", profile.id, {"version": profile.version, "changes": changed})
    reconcile(session, EVERYONE)
    return after


def delete_profile(session: Session, profile_id: str, actor: Actor) -> None:
    profile = _live_profile(session, profile_id)
    profile.deleted_at = utcnow()
    session.add(profile)
    record(session, actor, "profile.delete", "profile", profile.id, {"identifier": profile.identifier})
    reconcile(session, EVERYONE)


def list_profiles(session: Session) -> list[ProfilePublic]:
    rows = session.exec(select(Profile).where(col(Profile.deleted_at).is_(None)).order_by(Profile.identifier))
    return [profile_public(session, p) for p in rows]


def get_profile(session: Session, profile_id: str) -> ProfilePublic:
    return profile_public(session, _live_profile(session, profile_id))


def profile_for_device(session: Session, profile_id: str) -> Profile:
    return _live_profile(session, profile_id)


# --- Apps and licence pools ------------------------------------------------------------------------


def _live_app(session: Session, app_id: str) -> App:
    app = session.get(App, app_id)
    if app is None or app.deleted_at is not None:
        raise NotFound("app", app_id)
    return app


def _app_scope_rules(required_for: list[Any], groups: list[str]) -> dict[str, list[str]]:
    return {"category": [c.value for c in required_for], "group": list(groups)}


def licences_assigned(session: Session, app_id: str) -> int:
    return session.exec(select(func.count()).select_from(SchoolInstall).where(SchoolInstall.app_id == app_id)).one()


def licences_short(session: Session, app: App) -> int:
    """Devices that need the app, have no licence and no copy of their own: the pool's shortfall."""
    if app.licence != "school":
        return 0
    scope = _scope_of(session, app.id)
    if not scope["category"] and not scope["group"]:
        return 0
    family = PLATFORM_FAMILY.get(app.platform, app.platform)
    platforms = [p for p, f in PLATFORM_FAMILY.items() if f == family] or [app.platform]
    statement = (
        select(func.count())
        .select_from(Device)
        .join(AccessRule, AccessRule.category == Device.category)  # type: ignore[arg-type]
        .where(Device.state == "enrolled", col(Device.platform).in_(platforms))
        .where(not_(exists().where(SchoolInstall.device_id == Device.id, SchoolInstall.app_id == app.id)))
        .where(not_(exists().where(DeviceApp.device_id == Device.id, DeviceApp.identifier == app.identifier)))
    )
    if scope["category"]:
        statement = statement.where(col(Device.category).in_(scope["category"]))
    if scope["group"]:
        statement = statement.where(
            exists().where(PersonGroup.person_id == Device.person_id, col(PersonGroup.group_name).in_(scope["group"]))
        )
    return session.exec(statement).one()


def app_public(session: Session, app: App) -> AppPublic:
    scope = _scope_of(session, app.id)
    return AppPublic(
        id=app.id,
        identifier=app.identifier,
        name=app.name,
        platform=app.platform,
        licence=app.licence,  # type: ignore[arg-type]
        licences_total=app.licences_total if app.licence == "school" else None,
        licences_assigned=licences_assigned(session, app.id),
        licences_short=licences_short(session, app),
        min_version=app.min_version,
        required_for=scope["category"],
        required_groups=scope["group"],  # type: ignore[arg-type]
        age_rating=app.age_rating,
        itunes_store_id=app.itunes_store_id,
        manifest_url=app.manifest_url,
        created_at=app.created_at,
        updated_at=app.updated_at,
    )


def create_app(session: Session, data: AppCreate, actor: Actor) -> AppPublic:
    clash = session.exec(
        select(App).where(
            App.identifier == data.identifier, App.platform == data.platform.value, col(App.deleted_at).is_(None)
        )
    ).first()
    if clash is not None:
        raise Conflict(
            f"{data.identifier} is in the catalogue already for {data.platform.value}.", existing_id=clash.id
        )
    now = utcnow()
    app = App(
        id=new_id(),
        identifier=data.identifier,
        name=data.name,
        platform=data.platform.value,
        licence=data.licence.value,
        licences_total=data.licences_total or 0,
        min_version=data.min_version,
        age_rating=data.age_rating,
        itunes_store_id=data.itunes_store_id,
        manifest_url=data.manifest_url,
        created_at=now,
        updated_at=now,
    )
    session.add(app)
    session.flush()
    _write_scope(session, app.id, _app_scope_rules(data.required_for, data.required_groups))
    record(session, actor, "app.create", "app", app.id, data.model_dump(mode="json"))
    reconcile(session, EVERYONE)
    return app_public(session, app)


def update_app(session: Session, app_id: str, data: AppUpdate, actor: Actor) -> AppPublic:
    app = _live_app(session, app_id)
    changes = data.model_dump(mode="json", exclude_unset=True)
    if "licences_total" in changes and app.licence == "school":
        assigned = licences_assigned(session, app.id)
        if (data.licences_total or 0) < assigned:
            raise Conflict(
                f"{assigned} licences are in use; remove the app from devices before shrinking the pool below that."
            )
        app.licences_total = data.licences_total or 0
    for name in ("name", "min_version", "age_rating", "itunes_store_id", "manifest_url"):
        if name in changes:
            setattr(app, name, changes[name])
    if "required_for" in changes or "required_groups" in changes:
        scope = _scope_of(session, app.id)
        categories = data.required_for if data.required_for is not None else scope["category"]
        groups = data.required_groups if data.required_groups is not None else scope["group"]
        _write_scope(session, app.id, {"category": [getattr(c, "value", c) for c in categories], "group": list(groups)})
    app.updated_at = utcnow()
    session.add(app)
    record(session, actor, "app.update", "app", app.id, changes)
    reconcile(session, EVERYONE)
    return app_public(session, app)


def delete_app(session: Session, app_id: str, actor: Actor) -> None:
    """Takes the app out of the catalogue: the reconciler removes it from every device the school put it on."""
    app = _live_app(session, app_id)
    app.deleted_at = utcnow()
    session.add(app)
    record(session, actor, "app.delete", "app", app.id, {"identifier": app.identifier})
    reconcile(session, EVERYONE)


def list_apps(session: Session) -> list[AppPublic]:
    rows = session.exec(select(App).where(col(App.deleted_at).is_(None)).order_by(App.identifier))
    return [app_public(session, a) for a in rows]


def get_app(session: Session, app_id: str) -> AppPublic:
    return app_public(session, _live_app(session, app_id))


# --- Device answers --------------------------------------------------------------------------------


def on_command_result(session: Session, command: Command) -> None:
    """Profiles and licences follow the device's answers.

    A profile counts as installed at the version its InstallProfile named once the device acknowledges
    it, whatever the device later reports about versions (Apple's ProfileList carries none). Licences
    are confirmed on install and go back to the pool on failure, removal or leaving.
    """
    if command.status == "acknowledged" and command.type in (CommandType.InstallProfile, CommandType.RemoveProfile):
        _settle_profile(session, command)
    elif command.type == CommandType.InstallApplication.value:
        _settle_install(session, command)
    elif command.type == CommandType.RemoveApplication.value and command.status == "acknowledged":
        _release_by_identifier(session, command.device_id, command.payload.get("identifier"))
    elif (
        command.type in (CommandType.EraseDevice.value, CommandType.RemoveMDM.value)
        and command.status == "acknowledged"
    ):
        session.execute(delete(SchoolInstall).where(SchoolInstall.device_id == command.device_id))  # type: ignore[arg-type]


def _settle_profile(session: Session, command: Command) -> None:
    intent = intent_of(command)
    if isinstance(intent, intents.InstallProfile):
        inventory.record_profile_installed(session, command.device_id, intent.identifier, intent.version)
    elif isinstance(intent, intents.RemoveProfile):
        inventory.record_profile_removed(session, command.device_id, intent.identifier)


def _settle_install(session: Session, command: Command) -> None:
    app = _app_by_identifier(session, command.payload.get("identifier"))
    if app is None:
        return
    install = session.get(SchoolInstall, (command.device_id, app.id))
    if command.status == "acknowledged":
        if install is None:  # its reservation was released meanwhile; the device has it all the same
            install = SchoolInstall(
                device_id=command.device_id,
                app_id=app.id,
                status="installed",
                command_id=command.id,
                reserved_at=utcnow(),
            )
        install.status, install.installed_at = "installed", utcnow()
        session.add(install)
    elif command.status == "error" and install is not None and install.status == "reserved":
        session.delete(install)  # the install failed: the licence goes back to the pool


def _app_by_identifier(session: Session, identifier: str | None) -> App | None:
    return session.exec(
        select(App).where(App.identifier == identifier).order_by(col(App.deleted_at).is_not(None))
    ).first()


def _release_by_identifier(session: Session, device_id: str, identifier: str | None) -> None:
    app_ids = select(App.id).where(App.identifier == identifier)
    session.execute(
        delete(SchoolInstall).where(SchoolInstall.device_id == device_id, col(SchoolInstall.app_id).in_(app_ids))
    )  # type: ignore[arg-type]


# --- For other domains (the exit) ------------------------------------------------------------------


def school_apps_on_devices(session: Session, device_ids: Collection[str]) -> dict[str, list[tuple[str, bool]]]:
    """By device, (app identifier, licensed) of every app the school put on it, by its own records; in one query."""
    statement = (
        select(SchoolInstall.device_id, App.identifier, App.licence)
        .join(App, SchoolInstall.app_id == App.id)  # type: ignore[arg-type]
        .where(col(SchoolInstall.device_id).in_(device_ids))
        .order_by(App.identifier)
    )
    apps: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for device_id, identifier, licence in session.exec(statement):
        apps[device_id].append((identifier, licence == "school"))
    return apps


def filtering_profile_identifiers(session: Session) -> set[str]:
    """Identifiers of the school's profiles that carry the proxy or web filter (deleted ones included)."""
    return {
        profile.identifier
        for profile in session.exec(select(Profile))
        if any(payload.get("type") in ("proxy", "web_filter") for payload in profile.payloads)
    }


# --- For other domains: the desired state, read through this service, never the reconciler's tables --


def desired_catalogue(session: Session) -> Catalogue:
    """Everything the school manages, read once (small tables) and handed to `desired_by_device` per batch."""
    return load_catalogue(session)


def reconcile_devices(session: Session, device_ids: list[str], catalogue: Catalogue) -> None:
    """Reconciles these devices against a catalogue read earlier in the same run (the nightly remediation).

    A profile changed since then reconciles every device itself, and a command queued for a version the
    profile has left is withdrawn at delivery, so a catalogue a few minutes old queues nothing wrong.
    """
    if device_ids:
        reconcile(session, DeviceSelector(device_ids=frozenset(device_ids)), catalogue)


def desired_by_device(
    session: Session, device_ids: list[str], catalogue: Catalogue
) -> dict[str, tuple[list[ProfileSpec], list[AppSpec]]]:
    """The profiles and apps each device should carry (none for a device the school does not manage)."""
    facts = batch_facts(session, device_ids)
    return {d: desired_for(facts[d], catalogue) if d in facts else ([], []) for d in device_ids}


def app_age_ratings(session: Session) -> dict[str, int]:
    """The catalogue's age ratings by app identifier, for apps that have one."""
    statement = select(App.identifier, App.age_rating).where(col(App.age_rating).is_not(None))
    return dict(session.exec(statement).all())  # type: ignore[arg-type]
