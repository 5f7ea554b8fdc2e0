"""Storing what a device reports; an unchanged inventory costs one indexed read and no writes."""

import hashlib
import json
from datetime import datetime

from sqlalchemy import delete, insert
from sqlmodel import Session, select

from mdm.inventory.models import DeviceApp, DeviceInventory, DeviceProfile, Inventory


def inventory_hash(inventory: Inventory) -> str:
    document = inventory.model_dump(mode="json")
    # Order of apps and profiles is the device's whim, not a change.
    document["apps"] = sorted(document["apps"], key=lambda app: app["identifier"])
    document["profiles"] = sorted(document["profiles"], key=lambda profile: profile["identifier"])
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def store_inventory(session: Session, device_id: str, inventory: Inventory, now: datetime) -> bool:
    """Returns True when the inventory changed (the reconciler then has new reported state to compare)."""
    digest = inventory_hash(inventory)
    current = session.get(DeviceInventory, device_id)
    if current is not None and current.content_hash == digest:
        return False
    snapshot = inventory.model_dump(mode="json")
    if current is None:
        session.add(DeviceInventory(device_id=device_id, reported_at=now, content_hash=digest, snapshot=snapshot))
    else:
        current.reported_at, current.content_hash, current.snapshot = now, digest, snapshot
        session.add(current)
    _replace_rows(session, device_id, inventory)
    return True


def _replace_rows(session: Session, device_id: str, inventory: Inventory) -> None:
    session.execute(delete(DeviceApp).where(DeviceApp.device_id == device_id))  # type: ignore[arg-type]
    session.execute(delete(DeviceProfile).where(DeviceProfile.device_id == device_id))  # type: ignore[arg-type]
    apps = {app.identifier: app for app in inventory.apps}  # a duplicate report keeps the last entry
    profiles = {profile.identifier: profile for profile in inventory.profiles}
    if apps:
        rows = [{"device_id": device_id, **app.model_dump()} for app in apps.values()]
        session.execute(insert(DeviceApp), rows)
    if profiles:
        rows = [{"device_id": device_id, **profile.model_dump()} for profile in profiles.values()]
        session.execute(insert(DeviceProfile), rows)


def installed_apps(session: Session, device_id: str) -> list[DeviceApp]:
    return list(session.exec(select(DeviceApp).where(DeviceApp.device_id == device_id).order_by(DeviceApp.identifier)))
