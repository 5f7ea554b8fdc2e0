"""Apple's wire types read every real device message in shared/fixtures, or refuse it with a reason."""

import os
from pathlib import Path

import pytest

from mdm.channel.apple import queries
from mdm.channel.apple.messages import (
    Authenticate,
    CheckOut,
    MessageError,
    OtherCheckin,
    TokenUpdate,
    read_checkin,
    read_report,
)
from tests.apple_schema import REQUIRE_ENV, fixtures_dir

MESSAGES_FOLDER = "apple-device-messages"


def _messages_dir() -> Path:
    folder = fixtures_dir() / MESSAGES_FOLDER
    if folder.is_dir():
        return folder
    reason = f"Real Apple device messages are not at {folder} (set MDM_FIXTURES_DIR)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


def _plists() -> list[Path]:
    folder = fixtures_dir() / MESSAGES_FOLDER
    return sorted(p for p in folder.rglob("*") if p.suffix in (".xml", ".plist")) if folder.is_dir() else []


# Two commandment fixtures were anonymised with placeholders ("Base64=") where a device sends data: no
# device sends those, and the reader must refuse them rather than guess.
NOT_BASE64 = {"commandment/CertificateList/iOS-11.3.1.xml", "commandment/TokenUpdate/iOS-11.3.1.xml"}


def _read(body: bytes):  # type: ignore[no-untyped-def]
    """A check-in message if it has a MessageType, else an answer on the command endpoint."""
    if b"<key>MessageType</key>" in body:
        return read_checkin(body)
    return read_report(body)


def test_every_fixture_is_found():
    folder = _messages_dir()
    found = {str(p.relative_to(folder)) for p in _plists()}
    assert len(found) >= 48
    assert found >= NOT_BASE64


@pytest.mark.parametrize("path", _plists(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_device_message_is_read_or_refused_with_a_reason(path: Path):
    name = str(path.relative_to(_messages_dir()))
    body = path.read_bytes()
    if name in NOT_BASE64:
        with pytest.raises(MessageError, match="does not read"):
            _read(body)
        return
    message = _read(body)
    assert message.udid
    if isinstance(message, Authenticate | TokenUpdate | CheckOut | OtherCheckin):
        assert message.message_type in ("Authenticate", "TokenUpdate", "CheckOut")
        return
    query = queries.answered_query(message.document)
    if message.status == "Acknowledged" and query is not None:
        piece = queries.inventory_piece(query, message.document, {})
        if query == queries.DEVICE_INFORMATION and "OSVersion" in message.document["QueryResponses"]:
            assert piece.os_version == message.document["QueryResponses"]["OSVersion"], name
        elif query != queries.DEVICE_INFORMATION:
            assert piece.model_fields_set, f"{name}: the {query} answer gave no inventory"
    if message.status in ("Error", "CommandFormatError"):
        assert message.error_text()


def test_checkin_messages_are_of_their_folder():
    folder = _messages_dir() / "commandment"
    for kind, cls in (("Authenticate", Authenticate), ("TokenUpdate", TokenUpdate), ("CheckOut", CheckOut)):
        for path in sorted((folder / kind).iterdir()):
            if str(path.relative_to(folder.parent)) in NOT_BASE64:
                continue
            assert isinstance(read_checkin(path.read_bytes()), cls), path


def test_nanomdm_expectations_match_what_authenticate_says():
    """nanomdm's .txt files are the facts its tests expect of a device (not raw HTTP): ours agree."""
    folder = _messages_dir() / "nanomdm"
    by_udid = {}
    for path in folder.glob("Authenticate.*.plist"):
        message = read_checkin(path.read_bytes())
        by_udid[message.udid] = message
    for expected in sorted(folder.glob("*.txt")):
        facts = dict(line.split("\t", 1) for line in expected.read_text().splitlines() if "\t" in line)
        udid = _read((folder / expected.name.replace(".txt", ".plist")).read_bytes()).udid
        authenticate = by_udid[udid]
        assert (authenticate.build, authenticate.os_version, authenticate.product_name) == (
            facts["BuildVersion"],
            facts["OSVersion"],
            facts["ProductName"],
        ), expected.name


def test_authenticate_without_optional_keys_is_read():
    body = (_messages_dir() / "nanomdm" / "Authenticate.1.plist").read_bytes()
    message = read_checkin(body)
    assert isinstance(message, Authenticate)
    assert message.serial == "F5JM992LF193"
    assert message.product_name == "iPad2,5"
    assert message.model is None
    assert message.device_name is None


def test_user_channel_token_update_names_its_user():
    body = (_messages_dir() / "commandment" / "TokenUpdate" / "10.12.2-user.xml").read_bytes()
    assert read_checkin(body).user_id


def test_error_chain_reads_as_one_line():
    body = (_messages_dir() / "commandment" / "Errors" / "iOS-11.3.1-RemoveProfile-Unmanaged.xml").read_bytes()
    report = read_report(body)
    assert report.status == "Error"
    assert "is not managed by MDM" in report.error_text()
    assert "MCMDMErrorDomain 12013" in report.error_text()


def test_security_info_reads_passcode_and_encryption():
    folder = _messages_dir() / "commandment" / "SecurityInfo"
    ios = read_report((folder / "iOS-11.3.1.xml").read_bytes())
    piece = queries.inventory_piece(queries.SECURITY_INFO, ios.document, {})
    # No passcode: data protection is off even though the hardware could encrypt.
    assert (piece.passcode_set, piece.encrypted) == (False, False)
    assert piece.passcode_compliant is True  # the device's own verdict against the passcode profile
    mac = read_report((folder / "macOS-10.13.1.xml").read_bytes())
    assert queries.inventory_piece(queries.SECURITY_INFO, mac.document, {}).encrypted is not None


def test_managed_and_installed_lists_keep_the_familys_apps_apart():
    folder = _messages_dir() / "commandment"
    installed = read_report((folder / "InstalledApplicationList" / "iOS-12.1.xml").read_bytes())
    apps = queries.inventory_piece(queries.INSTALLED_APPS, installed.document, {}).apps
    assert apps
    assert not any(app.managed for app in apps)
    stored = {a.identifier: {"identifier": a.identifier, "version": a.version, "managed": False} for a in apps}
    managed = read_report((folder / "ManagedApplicationList" / "iOS-12.1-Managed.xml").read_bytes())
    merged = {a.identifier: a for a in queries.inventory_piece(queries.MANAGED_APPS, managed.document, stored).apps}
    assert merged["com.apple.Numbers"].managed
    assert sum(a.managed for a in merged.values()) == 1
    assert len(merged) >= len(stored)
    # The full list, arriving next, keeps which of its apps the school manages.
    school_app = apps[0].identifier
    listing = {"ManagedApplicationList": {school_app: {"Status": "Managed"}, "x.y": {"Status": "Installing"}}}
    merged = {a.identifier: a for a in queries.inventory_piece(queries.MANAGED_APPS, listing, stored).apps}
    remembered = {identifier: app.model_dump() for identifier, app in merged.items()}
    again = queries.inventory_piece(queries.INSTALLED_APPS, installed.document, remembered)  # type: ignore[arg-type]
    assert {a.identifier for a in again.apps if a.managed} == {school_app}
    assert len(again.apps) == len(apps)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"not a plist", "not an XML property list"),
        (b"bplist00\x00\x01", "not an XML property list"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><plist><dict/></plist>', "not an XML property list"),
        (b"<plist><array/></plist>", "not a dictionary"),
        (b"<plist><dict><key>MessageType</key><integer>1</integer></dict></plist>", "must be a string"),
        (b"<plist><dict><key>MessageType</key><string>CheckOut</string></dict></plist>", "UDID is missing"),
        (
            b"<plist><dict><key>MessageType</key><string>Authenticate</string>"
            b"<key>EnrollmentID</key><string>x</string></dict></plist>",
            "User Enrollment",
        ),
        (
            b"<plist><dict><key>MessageType</key><string>TokenUpdate</string><key>UDID</key><string>u</string>"
            b"<key>PushMagic</key><string>m</string></dict></plist>",
            "Token is missing",
        ),
    ],
)
def test_bad_checkin_bodies_are_refused_with_a_reason(body: bytes, reason: str):
    with pytest.raises(MessageError, match=reason):
        read_checkin(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<plist><dict><key>UDID</key><string>u</string></dict></plist>", "Status is missing"),
        (
            b"<plist><dict><key>UDID</key><string>u</string><key>Status</key><string>Done</string></dict></plist>",
            "not one of",
        ),
        (
            b"<plist><dict><key>UDID</key><string>u</string><key>Status</key><string>Acknowledged</string></dict></plist>",
            "CommandUUID",
        ),
    ],
)
def test_bad_answers_are_refused_with_a_reason(body: bytes, reason: str):
    with pytest.raises(MessageError, match=reason):
        read_report(body)
