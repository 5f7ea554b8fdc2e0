"""Check configuration profiles against Apple's published payload schemas, read in place.

Apple publishes one YAML file per payload type (github.com/apple/device-management). The profiles this
service generates are only useful if devices accept them, and a device rejects a whole profile over one
misspelt key or a string where an integer belongs, with a terse error on a child's iPad. So tests check
what we generate against Apple's own description of each payload.

The schemas are test fixtures, not part of the product: they are read from MDM_FIXTURES_DIR (default
<repo>/../shared/fixtures) and never copied into the repository. A clone without them skips these
tests with a reason; CI sets MDM_REQUIRE_FIXTURES=1 so that missing fixtures fail instead of passing
silently.

Format (docs/schema.md next to the schemas): `payloadkeys` lists keys with `key`, `type`, `presence`,
`rangelist`, `range`, `format` and, for arrays and dictionaries, `subkeys`; all of those are checked.
Not checked: `subtype`/`valuetype` (string formats such as hostname), `repetition` (array lengths, on
no key we generate) and `supportedOS` (which OS, supervision or enrolment allows a key), which only
means something for a given target device. Schemas are taken literally, quirks included: TopLevel.yaml
nests ConsentText's language keys under a ConsentTextItem dictionary, so a real ConsentText
({"en": "..."}) is reported as wrong; no profile we generate carries one.
"""

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURES_ENV = "MDM_FIXTURES_DIR"
REQUIRE_ENV = "MDM_REQUIRE_FIXTURES"
APPLE_FOLDER = "apple-device-management"

# A dictionary subkey with this name stands for every key the dictionary may hold (e.g. VendorConfig).
WILDCARD = "ANY"
# Schema files that describe the profile itself or keys shared by every payload, not payload types.
_NOT_PAYLOAD_TYPES = frozenset({"TopLevel", "CommonPayloadKeys"})

# Python values plistlib writes for each plist type. bool is a subclass of int, so it is kept out of
# the numeric types explicitly below.
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "<string>": (str,),
    "<boolean>": (bool,),
    "<date>": (datetime,),
    "<data>": (bytes, bytearray),
    "<array>": (list, tuple),
    "<dictionary>": (dict,),
}
_NUMERIC_TYPES = frozenset({"<integer>", "<real>"})
_KNOWN_TYPES = frozenset(_PLAIN_TYPES) | _NUMERIC_TYPES | {"<any>"}


class UnknownPayloadType(LookupError):
    """No schema file describes this PayloadType."""


class SchemaError(ValueError):
    """A schema file says something this reader does not understand; better loud than a silent pass."""


@dataclass(eq=False)
class KeySpec:
    """One key of a payload (or of a dictionary or array inside it) as Apple's schema describes it."""

    name: str
    type: str
    required: bool
    rangelist: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    # None when the schema gives no subkeys: such a dictionary takes any keys. Not in repr or eq
    # because some schemas refer to themselves (home screen folders hold pages of icons and folders).
    subkeys: list["KeySpec"] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class PayloadSchema:
    """A payload type's keys, with the keys common to every payload already merged in."""

    payload_type: str
    title: str
    source: Path
    keys: tuple[KeySpec, ...]


# Locating the fixtures


def fixtures_dir() -> Path:
    """The shared fixtures folder: MDM_FIXTURES_DIR, else <repo root>/../shared/fixtures."""
    configured = os.environ.get(FIXTURES_ENV)
    if configured:
        return Path(configured)
    repo_root = Path(__file__).resolve().parent.parent
    return repo_root.parent / "shared" / "fixtures"


def require_fixtures() -> Path:
    """The apple-device-management folder, or skip (fail under MDM_REQUIRE_FIXTURES=1) without it."""
    folder = fixtures_dir() / APPLE_FOLDER
    if (folder / "mdm" / "profiles").is_dir():
        return folder
    reason = (
        f"Apple's device-management schemas are not at {folder}: the Apple fixtures are not here "
        f"(set {FIXTURES_ENV} to the folder that holds {APPLE_FOLDER}/); a user's clone has none, "
        "as they are not shipped with the product"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        # CI promises these tests ran; a skip there would hide a broken fixtures mount.
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def _profiles_dir() -> Path:
    return require_fixtures() / "mdm" / "profiles"


# Reading schemas


def load_schema(payload_type: str) -> PayloadSchema:
    """The schema for a payload type, CommonPayloadKeys merged in; UnknownPayloadType if there is none."""
    if payload_type in _NOT_PAYLOAD_TYPES:
        raise UnknownPayloadType(f"{payload_type} names a schema file, not a payload type")
    # The directory is part of the cache key so that tests pointing MDM_FIXTURES_DIR elsewhere never
    # see schemas read from another folder.
    return _load_payload_schema(_profiles_dir(), payload_type)


@cache
def _load_payload_schema(profiles: Path, payload_type: str) -> PayloadSchema:
    common = _read_schema(profiles, "CommonPayloadKeys")
    own = _read_schema(profiles, payload_type)
    # A payload's own definition wins should it ever redefine a common key.
    own_names = {spec.name for spec in own.keys}
    merged = tuple(spec for spec in common.keys if spec.name not in own_names) + own.keys
    return PayloadSchema(own.payload_type, own.title, own.source, merged)


@cache
def _read_schema(profiles: Path, name: str) -> PayloadSchema:
    # Files are named after their payload type (so are all the iOS ones this service uses; a few
    # macOS-only files are not, and are out of reach here). A name with a path in it is never one.
    source = profiles / f"{name}.yaml"
    if Path(name).name != name or not source.is_file():
        raise UnknownPayloadType(f"no schema for {name} in {profiles}")
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    declared = document.get("payload", {}).get("payloadtype")
    if declared != name:
        # e.g. GlobalPreferences.yaml describes .GlobalPreferences: the file name is not a payload type.
        raise UnknownPayloadType(f"{source} describes {declared!r}, not {name!r}")
    keys = tuple(_compile_keys(document.get("payloadkeys", []), {}, name))
    return PayloadSchema(name, document.get("title", name), source, keys)


def _top_level_schema() -> PayloadSchema:
    return _read_schema(_profiles_dir(), "TopLevel")


def _compile_keys(raw_keys: list[dict[str, Any]], seen: dict[int, list[KeySpec]], where: str) -> list[KeySpec]:
    # YAML anchors make some schemas cyclic. Registering each subkeys list before filling it lets a
    # list that contains itself compile to a KeySpec tree that refers to itself, instead of recursing
    # forever.
    if id(raw_keys) in seen:
        return seen[id(raw_keys)]
    specs: list[KeySpec] = []
    seen[id(raw_keys)] = specs
    specs.extend(_compile_key(raw, seen, where) for raw in raw_keys)
    return specs


def _compile_key(raw: dict[str, Any], seen: dict[int, list[KeySpec]], where: str) -> KeySpec:
    name, type_name = raw["key"], raw["type"]
    if type_name not in _KNOWN_TYPES:
        raise SchemaError(f"{where}: {name}: unknown type {type_name!r}")
    bounds = raw.get("range", {})
    rangelist = raw.get("rangelist")
    subkeys = raw.get("subkeys")
    return KeySpec(
        name=name,
        type=type_name,
        required=raw.get("presence") == "required",
        rangelist=tuple(rangelist) if rangelist is not None else None,
        minimum=bounds.get("min"),
        maximum=bounds.get("max"),
        pattern=raw.get("format"),
        subkeys=_compile_keys(subkeys, seen, f"{where}: {name}") if subkeys is not None else None,
    )


# Validating


def validate_payload(payload: Mapping[str, Any]) -> list[str]:
    """Problems with one payload dictionary against the schema its PayloadType names; [] if valid."""
    if not isinstance(payload, Mapping):
        return [f"payload: expected dictionary, got {type(payload).__name__}"]
    payload_type = payload.get("PayloadType")
    if not isinstance(payload_type, str):
        return ["payload: PayloadType: missing or not a string, so no schema can be chosen"]
    try:
        schema = load_schema(payload_type)
    except UnknownPayloadType:
        return [f"{payload_type}: no schema for this PayloadType in {_profiles_dir()}"]
    return [f"{payload_type}: {problem}" for problem in _check_dictionary(payload, schema.keys, "")]


def validate_profile(profile: Mapping[str, Any]) -> list[str]:
    """Problems with a whole Configuration profile: its own keys, then every payload in PayloadContent."""
    if not isinstance(profile, Mapping):
        return [f"profile: expected dictionary, got {type(profile).__name__}"]
    top = _top_level_schema()
    problems = [f"profile: {problem}" for problem in _check_dictionary(profile, top.keys, "")]
    for index, payload in _payloads(profile):
        problems += [f"PayloadContent[{index}]: {problem}" for problem in validate_payload(payload)]
    return problems + _duplicate_problems(profile)


def _payloads(profile: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    # Entries that are not dictionaries were already reported by the top-level check.
    content = profile.get("PayloadContent")
    if not isinstance(content, list | tuple):
        return []
    return [(index, item) for index, item in enumerate(content) if isinstance(item, Mapping)]


def _duplicate_problems(profile: Mapping[str, Any]) -> list[str]:
    # Apple: PayloadIdentifier "must be unique within the profile", and a device matches payloads
    # across profile updates by identifier and UUID, so a repeated one makes an update ambiguous.
    everything = [profile] + [payload for _, payload in _payloads(profile)]
    problems = []
    for key in ("PayloadIdentifier", "PayloadUUID"):
        counts = Counter(item[key] for item in everything if isinstance(item.get(key), str))
        problems += [f"profile: {key} {value!r} is used {n} times" for value, n in counts.items() if n > 1]
    return problems


def _check_value(value: Any, spec: KeySpec, path: str) -> list[str]:
    mismatch = _type_problem(value, spec.type)
    if mismatch:
        return [f"{path}: {mismatch}"]
    problems = [f"{path}: {problem}" for problem in _constraint_problems(value, spec)]
    if spec.type == "<array>":
        problems += _check_array(value, spec.subkeys, path)
    elif spec.type == "<dictionary>":
        problems += _check_dictionary(value, spec.subkeys, path)
    return problems


def _type_problem(value: Any, type_name: str) -> str | None:
    if _has_type(value, type_name):
        return None
    return f"expected {type_name.strip('<>')}, got {type(value).__name__}"


def _has_type(value: Any, type_name: str) -> bool:
    if type_name == "<any>":
        return True
    if isinstance(value, bool) and type_name in _NUMERIC_TYPES:
        return False  # True is an int to Python but a <boolean> in a plist.
    if type_name == "<integer>":
        # Accept whole-number reals as integers: a value that went through JSON or arithmetic may
        # arrive as 6.0, and it means 6. plistlib would still write it as <real>, so the profile
        # builder must convert it before writing.
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if type_name == "<real>":
        return isinstance(value, int | float)
    return isinstance(value, _PLAIN_TYPES[type_name])


def _constraint_problems(value: Any, spec: KeySpec) -> list[str]:
    problems = []
    if spec.rangelist is not None and value not in spec.rangelist:
        problems.append(f"{value!r} is not one of {list(spec.rangelist)}")
    if isinstance(value, int | float):
        problems += _range_problems(value, spec)
    if spec.pattern is not None and isinstance(value, str) and re.search(spec.pattern, value) is None:
        problems.append(f"{value!r} does not match the format {spec.pattern}")
    return problems


def _range_problems(value: float, spec: KeySpec) -> list[str]:
    if spec.minimum is not None and value < spec.minimum:
        return [f"{value!r} is below the minimum {spec.minimum}"]
    if spec.maximum is not None and value > spec.maximum:
        return [f"{value!r} is above the maximum {spec.maximum}"]
    return []


def _check_array(items: Sequence[Any], subkeys: Sequence[KeySpec] | None, path: str) -> list[str]:
    # An array's single subkey describes every element; without one, elements are not described.
    if not subkeys:
        return []
    if len(subkeys) != 1:
        raise SchemaError(f"{path}: an array has {len(subkeys)} subkeys; Apple's format allows one")
    problems = []
    for index, item in enumerate(items):
        problems += _check_value(item, subkeys[0], f"{path}[{index}]")
    return problems


def _check_dictionary(value: Mapping[str, Any], subkeys: Sequence[KeySpec] | None, path: str) -> list[str]:
    # A dictionary whose schema lists no subkeys is not described any further: accept any keys.
    if subkeys is None:
        return []
    named = {spec.name: spec for spec in subkeys if spec.name != WILDCARD}
    wildcard = next((spec for spec in subkeys if spec.name == WILDCARD), None)
    problems = [
        f"{_join(path, name)}: required key missing"
        for name, spec in named.items()
        if spec.required and name not in value
    ]
    for key, item in value.items():
        problems += _check_entry(key, item, named.get(key, wildcard), path)
    return problems


def _check_entry(key: Any, item: Any, spec: KeySpec | None, path: str) -> list[str]:
    if not isinstance(key, str):
        return [f"{_join(path, repr(key))}: plist dictionary keys must be strings"]
    if spec is None:
        return [f"{_join(path, key)}: unknown key"]
    return _check_value(item, spec, _join(path, key))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Commands (mdm/commands/*.yaml): `payload.requesttype` names the command, `payloadkeys` its keys


def _commands_dir() -> Path:
    return require_fixtures() / "mdm" / "commands"


@cache
def _command_schemas(commands: Path) -> dict[str, tuple[KeySpec, ...]]:
    """Each RequestType's keys, read once from every command schema file."""
    schemas: dict[str, tuple[KeySpec, ...]] = {}
    for source in sorted(commands.glob("*.yaml")):
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
        request_type = document.get("payload", {}).get("requesttype")
        if request_type:
            schemas[request_type] = tuple(_compile_keys(document.get("payloadkeys") or [], {}, request_type))
    return schemas


def validate_command(command: Mapping[str, Any]) -> list[str]:
    """Problems with a command dictionary ({RequestType, ...}) against its command schema; [] if valid."""
    if not isinstance(command, Mapping):
        return [f"command: expected dictionary, got {type(command).__name__}"]
    request_type = command.get("RequestType")
    schemas = _command_schemas(_commands_dir())
    if request_type not in schemas:
        return [f"command: no schema for RequestType {request_type!r} in {_commands_dir()}"]
    keys = {name: value for name, value in command.items() if name != "RequestType"}
    return [f"{request_type}: {problem}" for problem in _check_dictionary(keys, list(schemas[request_type]), "")]
