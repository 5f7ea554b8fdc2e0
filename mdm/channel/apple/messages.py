"""Apple's MDM wire types, read from the plists devices send: check-in messages and command answers.

Read leniently, the way devices really behave: a key Apple marks optional, or that some devices and
clients leave out (OSVersion, Model, ProductName, RequestType in an answer), is simply None. What is
refused is what would make the message mean nothing or something else: a body that is not an XML plist,
a MessageType or Status we cannot tell, a UDID missing, a key whose value has the wrong type. Every
refusal is a `MessageError` with a reason a person can read in the device's log.

Only XML plists are read: devices send nothing else, and the binary format is attack surface for no
gain. plistlib's XML reader refuses entity declarations, so no entity expansion reaches us.
"""

import binascii
import plistlib
import xml.parsers.expat
from dataclasses import dataclass, field
from typing import Any

from mdm.validation import MAX_OS_VERSION

MAX_UDID = 100  # apple_device.udid
MAX_TEXT = 255


class MessageError(ValueError):
    """A body that is not a message this service can read; `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def read_plist(body: bytes) -> dict[str, Any]:
    """The body's top-level dictionary; MessageError when it is not an XML plist holding one."""
    if not body.strip():
        raise MessageError("The body is empty; an XML property list was expected.")
    try:
        document = plistlib.loads(body, fmt=plistlib.FMT_XML)
    except (plistlib.InvalidFileException, xml.parsers.expat.ExpatError) as exc:
        raise MessageError(f"The body is not an XML property list: {exc}.") from exc
    except (binascii.Error, ValueError, OverflowError, TypeError, KeyError, IndexError) as exc:
        # A <data> that is not base64, a <date> or <integer> that does not read, a stray closing tag.
        raise MessageError(f"The property list has a value that does not read: {exc}.") from exc
    if not isinstance(document, dict):
        raise MessageError(f"The property list holds a {type(document).__name__}, not a dictionary.")
    return document


def _text(document: dict[str, Any], key: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    value = document.get(key)
    if value is None:
        if required:
            raise MessageError(f"{key} is missing.")
        return None
    if not isinstance(value, str):
        raise MessageError(f"{key} must be a string, not {type(value).__name__}.")
    value = value.replace("\x00", "").strip()
    if len(value) > limit:
        raise MessageError(f"{key} is longer than {limit} characters.")
    if required and not value:
        raise MessageError(f"{key} is empty.")
    return value or None


def _data(document: dict[str, Any], key: str) -> bytes | None:
    value = document.get(key)
    if value is None or isinstance(value, bytes):
        return value
    raise MessageError(f"{key} must be data, not {type(value).__name__}.")


def _udid(document: dict[str, Any]) -> str:
    if document.get("UDID") is None and document.get("EnrollmentID") is not None:
        raise MessageError("This is a User Enrollment (EnrollmentID, no UDID); only device enrolment is supported.")
    return _text(document, "UDID", required=True, limit=MAX_UDID)  # type: ignore[return-value]


# --- Check-in messages (PUT /mdm/checkin) -----------------------------------------------------------


@dataclass(frozen=True)
class CheckinMessage:
    message_type: str
    udid: str
    topic: str | None
    # Set on macOS's user channel (and Shared iPad users): a user, not the device, is talking.
    user_id: str | None


@dataclass(frozen=True)
class Authenticate(CheckinMessage):
    serial: str | None = None
    model: str | None = None
    product_name: str | None = None
    os_version: str | None = None
    build: str | None = None
    device_name: str | None = None


@dataclass(frozen=True)
class TokenUpdate(CheckinMessage):
    token: bytes = b""
    push_magic: str = ""
    awaiting_configuration: bool = False


@dataclass(frozen=True)
class CheckOut(CheckinMessage):
    pass


@dataclass(frozen=True)
class OtherCheckin(CheckinMessage):
    """A MessageType this service does not handle (UserAuthenticate, DeclarativeManagement, ...)."""


def read_checkin(body: bytes) -> CheckinMessage:
    document = read_plist(body)
    message_type = _text(document, "MessageType", required=True)
    common = {
        "message_type": message_type,
        "udid": _udid(document),
        "topic": _text(document, "Topic"),
        "user_id": _text(document, "UserID"),
    }
    if message_type == "Authenticate":
        return Authenticate(
            **common,  # type: ignore[arg-type]
            serial=_text(document, "SerialNumber", limit=100),
            model=_text(document, "Model", limit=200) or _text(document, "ModelName", limit=200),
            product_name=_text(document, "ProductName", limit=200),
            os_version=_text(document, "OSVersion", limit=MAX_OS_VERSION),
            build=_text(document, "BuildVersion", limit=50),
            device_name=_text(document, "DeviceName", limit=200),
        )
    if message_type == "TokenUpdate":
        return _token_update(document, common)
    if message_type == "CheckOut":
        return CheckOut(**common)  # type: ignore[arg-type]
    return OtherCheckin(**common)  # type: ignore[arg-type]


def _token_update(document: dict[str, Any], common: dict[str, Any]) -> TokenUpdate:
    token = _data(document, "Token")
    if not token:
        raise MessageError("Token is missing: a TokenUpdate carries the device's push token.")
    if len(token) > 100:
        raise MessageError(f"Token is {len(token)} bytes; APNs device tokens are at most 100.")
    awaiting = document.get("AwaitingConfiguration", False)
    return TokenUpdate(
        **common,
        token=token,
        push_magic=_text(document, "PushMagic", required=True, limit=100),  # type: ignore[arg-type]
        awaiting_configuration=awaiting is True,
    )


# --- Command answers (PUT /mdm/connect) -------------------------------------------------------------

STATUSES = ("Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow")


@dataclass(frozen=True)
class ErrorDetail:
    code: int | None
    domain: str | None
    description: str | None


@dataclass(frozen=True)
class Report:
    """What a device says on the command endpoint: idle, or its answer to one command (and its data)."""

    udid: str
    status: str
    command_uuid: str | None
    request_type: str | None
    user_id: str | None
    error_chain: tuple[ErrorDetail, ...] = ()
    # The whole answer: a query's data sits under a key named after it (QueryResponses, SecurityInfo, ...).
    document: dict[str, Any] = field(default_factory=dict, repr=False)

    def error_text(self) -> str:
        """The error chain as one line a technician can read in the command history."""
        parts = [
            " ".join(p for p in (e.description, f"({e.domain} {e.code})" if e.domain or e.code else None) if p)
            for e in self.error_chain
        ]
        text = "; ".join(p for p in parts if p)
        if self.status == "CommandFormatError":
            text = "the device could not read the command" + (f": {text}" if text else "")
        return text[:2000] or "the device reported an error without details"


def read_report(body: bytes) -> Report:
    document = read_plist(body)
    status = _text(document, "Status", required=True)
    if status not in STATUSES:
        raise MessageError(f"Status {status!r} is not one of {', '.join(STATUSES)}.")
    command_uuid = _text(document, "CommandUUID", limit=100)
    if status != "Idle" and command_uuid is None:
        raise MessageError(f"A {status} answer must name its CommandUUID.")
    return Report(
        udid=_udid(document),
        status=status,
        command_uuid=command_uuid,
        request_type=_text(document, "RequestType"),
        user_id=_text(document, "UserID"),
        error_chain=_error_chain(document.get("ErrorChain")),
        document=document,
    )


def _error_chain(value: Any) -> tuple[ErrorDetail, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MessageError("ErrorChain must be an array.")
    chain = []
    for item in value:
        if not isinstance(item, dict):
            raise MessageError("Each ErrorChain entry must be a dictionary.")
        code = item.get("ErrorCode")
        chain.append(
            ErrorDetail(
                code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                domain=_text(item, "ErrorDomain"),
                description=_text(item, "USEnglishDescription", limit=2000)
                or _text(item, "LocalizedDescription", limit=2000),
            )
        )
    return tuple(chain)
