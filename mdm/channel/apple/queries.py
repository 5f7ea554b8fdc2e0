"""Apple's inventory queries: which ones we ask, the commands that ask them, and their answers as inventory.

Apple reports a device's state one query at a time, each answer a piece of the inventory the agent sends
whole: DeviceInformation (OS version and build), SecurityInfo (passcode, encryption), the installed
apps, which of them the school manages, and the profiles. Each answer becomes a partial `Inventory`
holding only the fields it speaks for, merged into the same snapshot the compliance rules read.

Managed and family apps are kept apart across two answers: InstalledApplicationList lists every app but
not who manages it, ManagedApplicationList lists the school's. Each answer is merged with what the other
last said (`stored_apps`), so the order they arrive in does not matter.
"""

from collections.abc import Mapping
from typing import Any

from mdm.channel.apple.messages import MessageError
from mdm.inventory.models import InstalledApp, Inventory
from mdm.validation import MAX_OS_VERSION

DEVICE_INFORMATION = "DeviceInformation"
SECURITY_INFO = "SecurityInfo"
INSTALLED_APPS = "InstalledApplicationList"
MANAGED_APPS = "ManagedApplicationList"
PROFILE_LIST = "ProfileList"
QUERIES = (DEVICE_INFORMATION, SECURITY_INFO, INSTALLED_APPS, MANAGED_APPS, PROFILE_LIST)

# What DeviceInformation asks for: what the inventory and the device's record use, nothing more.
DEVICE_QUERIES = ["OSVersion", "BuildVersion", "Model", "ModelName", "ProductName", "SerialNumber", "DeviceName"]

# Where each answer keeps its data (DeviceInformation's is QueryResponses).
ANSWER_KEYS = {
    DEVICE_INFORMATION: "QueryResponses",
    SECURITY_INFO: "SecurityInfo",
    INSTALLED_APPS: "InstalledApplicationList",
    MANAGED_APPS: "ManagedApplicationList",
    PROFILE_LIST: "ProfileList",
}
# A managed app in one of these states is on the device as the school's (the others are on the way, or failed).
INSTALLED_MANAGED_STATUSES = frozenset({"Managed"})


def query_command(query: str) -> dict[str, Any]:
    """The Command dictionary that asks one query."""
    if query == DEVICE_INFORMATION:
        return {"RequestType": query, "Queries": list(DEVICE_QUERIES)}
    if query == INSTALLED_APPS:
        return {"RequestType": query, "ManagedAppsOnly": False}
    return {"RequestType": query}


def answered_query(document: Mapping[str, Any]) -> str | None:
    """Which query an answer is for, by the data it carries (answers often leave RequestType out)."""
    return next((query for query, key in ANSWER_KEYS.items() if key in document), None)


def inventory_piece(query: str, document: Mapping[str, Any], stored_apps: Mapping[str, InstalledApp]) -> Inventory:
    """The answer as a partial inventory: only the fields this query speaks for are set."""
    data = document.get(ANSWER_KEYS[query])
    if query == DEVICE_INFORMATION:
        facts = _dictionary(data, query)
        os_version = _string(facts, "OSVersion", limit=MAX_OS_VERSION)
        return _only_known(os_version=os_version, build=_string(facts, "BuildVersion"))
    if query == SECURITY_INFO:
        return _security(_dictionary(data, query))
    if query == INSTALLED_APPS:
        return Inventory(apps=_installed(_array(data, query), stored_apps))
    if query == MANAGED_APPS:
        return Inventory(apps=_with_managed(_dictionary(data, query), stored_apps))
    return Inventory(profiles=_profiles(_array(data, query)))


def device_facts(document: Mapping[str, Any]) -> dict[str, str | None]:
    """DeviceInformation's facts about the device itself (model, name), for the device's record."""
    facts = document.get("QueryResponses")
    if not isinstance(facts, Mapping):
        return {}
    return {
        "model": _string(facts, "ProductName") or _string(facts, "Model"),
        "name": _string(facts, "DeviceName"),
    }


def _security(info: Mapping[str, Any]) -> Inventory:
    present = info.get("PasscodePresent")
    passcode_set = present if isinstance(present, bool) else None
    fde = info.get("FDE_Enabled")  # macOS: FileVault
    caps = info.get("HardwareEncryptionCaps")  # iOS: 3 = block and file level; data protection needs a passcode
    if isinstance(fde, bool):
        encrypted: bool | None = fde
    elif isinstance(caps, int) and not isinstance(caps, bool):
        encrypted = (caps & 3) == 3 and passcode_set is True
    else:
        encrypted = None
    compliant = info.get("PasscodeCompliant")
    passcode_compliant = compliant if isinstance(compliant, bool) else None
    return _only_known(passcode_set=passcode_set, passcode_compliant=passcode_compliant, encrypted=encrypted)


def _only_known(**fields: Any) -> Inventory:
    """A fact the answer left out is not carried, so the stored one stays (a partial report replaces what it carries)."""
    return Inventory(**{name: value for name, value in fields.items() if value is not None})


def _installed(items: list[Any], stored_apps: Mapping[str, InstalledApp]) -> list[dict[str, Any]]:
    apps = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        identifier = _string(item, "Identifier")
        if identifier is None:
            continue  # a web clip or an app the device will not name: nothing a rule or command can target
        known = stored_apps.get(identifier)
        version = _string(item, "ShortVersion") or _string(item, "Version")
        apps[identifier] = {"identifier": identifier, "version": version, "managed": bool(known and known["managed"])}
    return list(apps.values())


def _with_managed(listing: Mapping[str, Any], stored_apps: Mapping[str, InstalledApp]) -> list[dict[str, Any]]:
    managed = {
        identifier
        for identifier, state in listing.items()
        if isinstance(state, Mapping) and state.get("Status") in INSTALLED_MANAGED_STATUSES
    }
    apps = {
        identifier: {"identifier": identifier, "version": app["version"], "managed": identifier in managed}
        for identifier, app in stored_apps.items()
    }
    for identifier in managed - apps.keys():
        apps[identifier] = {"identifier": identifier, "version": None, "managed": True}
    return list(apps.values())


def _profiles(items: list[Any]) -> list[dict[str, Any]]:
    identifiers = {_string(item, "PayloadIdentifier") for item in items if isinstance(item, Mapping)}
    return [{"identifier": identifier} for identifier in sorted(i for i in identifiers if i)]


def _dictionary(value: Any, query: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MessageError(f"The {query} answer carries no {ANSWER_KEYS[query]} dictionary.")
    return value


def _array(value: Any, query: str) -> list[Any]:
    if not isinstance(value, list):
        raise MessageError(f"The {query} answer carries no {ANSWER_KEYS[query]} array.")
    return value


def _string(facts: Mapping[str, Any], key: str, limit: int = 100) -> str | None:
    value = facts.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip()[:limit]
    return None
