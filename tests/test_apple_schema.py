"""The Apple schema validator accepts real payloads of the types we generate and catches what a device rejects.

These tests use no database: only Apple's schemas, found by require_fixtures() (skipped without them,
failed under MDM_REQUIRE_FIXTURES=1).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.apple_schema import (
    FIXTURES_ENV,
    REQUIRE_ENV,
    UnknownPayloadType,
    fixtures_dir,
    load_schema,
    require_fixtures,
    validate_payload,
    validate_profile,
)

Payload = dict[str, Any]

ORG = "org.example-school.mdm"
PROFILE_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A01"
WIFI_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A02"
PROXY_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A03"
FILTER_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A04"
PASSCODE_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A05"
RESTRICTIONS_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A06"
IDENTITY_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A07"
RADIUS_CA_UUID = "5B0F8A57-2C8E-4C1B-9B4A-0D6B8E0C1A08"


def _common(payload_type: str, name: str, uuid: str, display_name: str) -> Payload:
    return {
        "PayloadType": payload_type,
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ORG}.{name}",
        "PayloadUUID": uuid,
        "PayloadDisplayName": display_name,
        "PayloadOrganization": "Example School",
    }


def wifi_payload() -> Payload:
    """Staff Wi-Fi: WPA2 enterprise, EAP-TLS with the device identity from the same profile."""
    return _common("com.apple.wifi.managed", "wifi.staff", WIFI_UUID, "Staff Wi-Fi") | {
        "SSID_STR": "ExampleSchool-Staff",
        "HIDDEN_NETWORK": False,
        "AutoJoin": True,
        "EncryptionType": "WPA2",
        "ProxyType": "None",
        # EAP-TLS proves the device with this identity, so no password is stored on the iPad.
        "PayloadCertificateUUID": IDENTITY_UUID,
        "EAPClientConfiguration": {
            "AcceptEAPTypes": [13],
            "TLSTrustedServerNames": ["radius.example-school.org"],
            "PayloadCertificateAnchorUUID": [RADIUS_CA_UUID],
            "TLSMinimumVersion": "1.2",
        },
    }


def proxy_payload() -> Payload:
    """Global proxy from a PAC file, as school web filtering appliances publish."""
    return _common("com.apple.proxy.http.global", "proxy", PROXY_UUID, "School proxy") | {
        "ProxyType": "Auto",
        "ProxyPACURL": "https://proxy.example-school.org/proxy.pac",
        "ProxyPACFallbackAllowed": False,
        "ProxyCaptiveLoginAllowed": True,
    }


def filter_payload() -> Payload:
    """Built-in filter for adult content, with sites that stay reachable whatever it decides."""
    return _common("com.apple.webcontent-filter", "webfilter", FILTER_UUID, "Web filter") | {
        "FilterType": "BuiltIn",
        "AutoFilterEnabled": True,
        "PermittedURLs": ["https://www.bbc.co.uk/bitesize", "https://classroom.google.com"],
        "DenyListURLs": ["https://games.example.com"],
    }


def bookmarks_filter_payload() -> Payload:
    """Infants' devices: only these bookmarks open. Both keys, for devices before and after iOS 14.5."""
    bookmarks = [
        {"URL": "https://www.bbc.co.uk/cbeebies", "Title": "CBeebies"},
        {"URL": "https://www.topmarks.co.uk", "Title": "Topmarks"},
    ]
    return _common("com.apple.webcontent-filter", "webfilter.infants", FILTER_UUID, "Infant bookmarks") | {
        "FilterType": "BuiltIn",
        "AllowListBookmarks": bookmarks,
        "WhitelistedBookmarks": bookmarks,
    }


def passcode_payload() -> Payload:
    return _common("com.apple.mobiledevice.passwordpolicy", "passcode", PASSCODE_UUID, "Passcode") | {
        "forcePIN": True,
        "allowSimple": False,
        "minLength": 6,
        "maxFailedAttempts": 10,
        "maxInactivity": 5,
    }


def restrictions_payload() -> Payload:
    return _common("com.apple.applicationaccess", "restrictions", RESTRICTIONS_UUID, "Restrictions") | {
        "allowCamera": True,
        "allowExplicitContent": False,
        "allowInAppPurchases": False,
        "allowAppRemoval": False,
        "ratingRegion": "gb",
        "ratingApps": 300,
        "safariAcceptCookies": 1.5,
        "blockedAppBundleIDs": ["com.example.chat"],
    }


def identity_payload() -> Payload:
    """The device identity the Wi-Fi payload names; the bytes stand in for a real PKCS #12 file."""
    return _common("com.apple.security.pkcs12", "identity", IDENTITY_UUID, "Device identity") | {
        "PayloadCertificateFileName": "device.p12",
        "PayloadContent": b"0\x82\x0a\x00placeholder PKCS#12",
        "Password": "one-time-import-password",
    }


def radius_ca_payload() -> Payload:
    return _common("com.apple.security.root", "radius-ca", RADIUS_CA_UUID, "RADIUS CA") | {
        "PayloadCertificateFileName": "radius-ca.cer",
        "PayloadContent": b"0\x82\x03\x00placeholder DER certificate",
    }


def configuration_profile() -> Payload:
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ORG}.profile.staff-ipad",
        "PayloadUUID": PROFILE_UUID,
        "PayloadDisplayName": "Example School staff iPad",
        "PayloadOrganization": "Example School",
        "PayloadRemovalDisallowed": True,
        "PayloadContent": [
            identity_payload(),
            radius_ca_payload(),
            wifi_payload(),
            proxy_payload(),
            filter_payload(),
            passcode_payload(),
            restrictions_payload(),
        ],
    }


GOOD_PAYLOADS: list[Callable[[], Payload]] = [
    wifi_payload,
    proxy_payload,
    filter_payload,
    bookmarks_filter_payload,
    passcode_payload,
    restrictions_payload,
    identity_payload,
]


@pytest.fixture
def apple() -> Path:
    return require_fixtures()


# Correct payloads pass


@pytest.mark.usefixtures("apple")
@pytest.mark.parametrize("build", GOOD_PAYLOADS, ids=lambda build: build.__name__)
def test_accepts_a_correct_payload(build: Callable[[], Payload]) -> None:
    assert validate_payload(build()) == []


@pytest.mark.usefixtures("apple")
def test_accepts_a_whole_configuration_profile() -> None:
    assert validate_profile(configuration_profile()) == []


@pytest.mark.usefixtures("apple")
def test_common_payload_keys_are_merged_into_every_schema() -> None:
    names = {spec.name for spec in load_schema("com.apple.proxy.http.global").keys}
    assert {"PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID", "PayloadDisplayName"} <= names
    assert "ProxyPACURL" in names


@pytest.mark.usefixtures("apple")
def test_schemas_are_read_once() -> None:
    assert load_schema("com.apple.wifi.managed") is load_schema("com.apple.wifi.managed")


# Problems are caught, and named by path


@pytest.mark.usefixtures("apple")
def test_unknown_key() -> None:
    payload = restrictions_payload() | {"allowCamra": False}
    assert validate_payload(payload) == ["com.apple.applicationaccess: allowCamra: unknown key"]


@pytest.mark.usefixtures("apple")
def test_unknown_key_inside_a_dictionary() -> None:
    payload = wifi_payload()
    payload["EAPClientConfiguration"]["TLSMinVersion"] = "1.2"
    assert validate_payload(payload) == ["com.apple.wifi.managed: EAPClientConfiguration.TLSMinVersion: unknown key"]


@pytest.mark.usefixtures("apple")
def test_string_where_an_integer_is_expected() -> None:
    payload = proxy_payload() | {"ProxyServerPort": "8080"}
    assert validate_payload(payload) == ["com.apple.proxy.http.global: ProxyServerPort: expected integer, got str"]


@pytest.mark.usefixtures("apple")
def test_bool_where_an_integer_is_expected() -> None:
    # True == 1 to Python, but a device reads <true/> where it wanted <integer>: a rejected profile.
    payload = passcode_payload() | {"maxInactivity": True}
    assert validate_payload(payload) == [
        "com.apple.mobiledevice.passwordpolicy: maxInactivity: expected integer, got bool"
    ]


@pytest.mark.usefixtures("apple")
def test_whole_number_real_is_accepted_as_an_integer() -> None:
    assert validate_payload(passcode_payload() | {"minLength": 6.0}) == []
    assert validate_payload(passcode_payload() | {"minLength": 6.5}) == [
        "com.apple.mobiledevice.passwordpolicy: minLength: expected integer, got float"
    ]


@pytest.mark.usefixtures("apple")
def test_integer_is_accepted_as_a_real_but_bool_is_not() -> None:
    assert validate_payload(restrictions_payload() | {"safariAcceptCookies": 2}) == []
    assert validate_payload(restrictions_payload() | {"safariAcceptCookies": False}) == [
        "com.apple.applicationaccess: safariAcceptCookies: expected real, got bool"
    ]


@pytest.mark.usefixtures("apple")
def test_value_outside_the_range() -> None:
    assert validate_payload(passcode_payload() | {"maxFailedAttempts": 12}) == [
        "com.apple.mobiledevice.passwordpolicy: maxFailedAttempts: 12 is above the maximum 11"
    ]
    assert validate_payload(passcode_payload() | {"maxFailedAttempts": 1}) == [
        "com.apple.mobiledevice.passwordpolicy: maxFailedAttempts: 1 is below the minimum 2"
    ]


@pytest.mark.usefixtures("apple")
def test_value_not_in_the_rangelist() -> None:
    payload = proxy_payload() | {"ProxyType": "Automatic"}
    assert validate_payload(payload) == [
        "com.apple.proxy.http.global: ProxyType: 'Automatic' is not one of ['Manual', 'Auto']"
    ]


@pytest.mark.usefixtures("apple")
def test_rangelist_applies_to_each_array_element() -> None:
    payload = wifi_payload()
    payload["EAPClientConfiguration"]["AcceptEAPTypes"] = [13, 99]
    assert validate_payload(payload) == [
        "com.apple.wifi.managed: EAPClientConfiguration.AcceptEAPTypes[1]: "
        "99 is not one of [13, 17, 18, 21, 23, 25, 43]"
    ]


@pytest.mark.usefixtures("apple")
def test_array_elements_are_type_checked() -> None:
    payload = filter_payload() | {"PermittedURLs": ["https://www.bbc.co.uk", 42]}
    assert validate_payload(payload) == ["com.apple.webcontent-filter: PermittedURLs[1]: expected string, got int"]


@pytest.mark.usefixtures("apple")
def test_missing_required_key() -> None:
    payload = wifi_payload()
    del payload["PayloadUUID"]
    assert validate_payload(payload) == ["com.apple.wifi.managed: PayloadUUID: required key missing"]


@pytest.mark.usefixtures("apple")
def test_missing_required_key_inside_nested_structures() -> None:
    payload = bookmarks_filter_payload()
    payload["AllowListBookmarks"] = [{"URL": "https://www.topmarks.co.uk"}]
    wifi = wifi_payload()
    del wifi["EAPClientConfiguration"]["AcceptEAPTypes"]
    assert validate_payload(payload) == [
        "com.apple.webcontent-filter: AllowListBookmarks[0].Title: required key missing"
    ]
    assert validate_payload(wifi) == [
        "com.apple.wifi.managed: EAPClientConfiguration.AcceptEAPTypes: required key missing"
    ]


@pytest.mark.usefixtures("apple")
def test_format_from_the_schema() -> None:
    payload = wifi_payload() | {"PayloadCertificateUUID": "device-identity"}
    [problem] = validate_payload(payload)
    assert problem.startswith("com.apple.wifi.managed: PayloadCertificateUUID: 'device-identity' does not match")


@pytest.mark.usefixtures("apple")
def test_data_and_date_types() -> None:
    assert validate_payload(identity_payload() | {"PayloadContent": "MIIK..."}) == [
        "com.apple.security.pkcs12: PayloadContent: expected data, got str"
    ]
    profile = configuration_profile() | {"RemovalDate": datetime(2026, 7, 24, tzinfo=UTC)}
    assert validate_profile(profile) == []
    assert validate_profile(profile | {"RemovalDate": "2026-07-24"}) == ["profile: RemovalDate: expected date, got str"]


@pytest.mark.usefixtures("apple")
def test_free_form_dictionary_takes_any_keys() -> None:
    # VendorConfig's only subkey is ANY: whatever the filter vendor's plug-in reads.
    payload = filter_payload() | {"VendorConfig": {"SchoolCode": "EX123", "Level": 2}}
    assert validate_payload(payload) == []


@pytest.mark.usefixtures("apple")
def test_self_referencing_schema() -> None:
    # Home screen folders hold pages of icons, which may be folders: Apple's YAML refers to itself.
    folder = {"Type": "Folder", "DisplayName": "Maths", "Pages": [[{"Type": "Application"}]]}
    payload = _common("com.apple.homescreenlayout", "home", PROFILE_UUID, "Home") | {"Pages": [[folder]]}
    assert validate_payload(payload) == [
        "com.apple.homescreenlayout: Pages[0][0].Pages[0][0].Type: "
        "'Application' is not one of ['App', 'Folder', 'WebClip']"
    ]


@pytest.mark.usefixtures("apple")
def test_unknown_payload_type() -> None:
    [problem] = validate_payload(proxy_payload() | {"PayloadType": "com.apple.proxy.http.globl"})
    assert problem.startswith("com.apple.proxy.http.globl: no schema for this PayloadType")
    assert validate_payload({"PayloadVersion": 1}) == [
        "payload: PayloadType: missing or not a string, so no schema can be chosen"
    ]
    with pytest.raises(UnknownPayloadType, match="not a payload type"):
        load_schema("TopLevel")


# Whole profiles


@pytest.mark.usefixtures("apple")
def test_profile_top_level_keys_are_checked() -> None:
    profile = configuration_profile() | {"PayloadType": "Configurations", "PayloadScope": "system", "Name": "x"}
    assert validate_profile(profile) == [
        "profile: PayloadType: 'Configurations' is not one of ['Configuration']",
        "profile: PayloadScope: 'system' is not one of ['System', 'User']",
        "profile: Name: unknown key",
    ]


@pytest.mark.usefixtures("apple")
def test_profile_problems_name_the_payload() -> None:
    profile = configuration_profile()
    profile["PayloadContent"][3]["ProxyServerPort"] = "8080"
    del profile["PayloadContent"][5]["PayloadVersion"]
    assert validate_profile(profile) == [
        "PayloadContent[3]: com.apple.proxy.http.global: ProxyServerPort: expected integer, got str",
        "PayloadContent[5]: com.apple.mobiledevice.passwordpolicy: PayloadVersion: required key missing",
    ]


@pytest.mark.usefixtures("apple")
def test_profile_payload_content_must_be_dictionaries() -> None:
    profile = configuration_profile()
    profile["PayloadContent"].append("com.apple.wifi.managed")
    assert validate_profile(profile) == ["profile: PayloadContent[7]: expected dictionary, got str"]


@pytest.mark.usefixtures("apple")
def test_profile_without_payload_content() -> None:
    profile = configuration_profile()
    del profile["PayloadContent"]
    assert validate_profile(profile) == ["profile: PayloadContent: required key missing"]


@pytest.mark.usefixtures("apple")
def test_profile_identifiers_and_uuids_are_unique() -> None:
    profile = configuration_profile()
    profile["PayloadContent"][4]["PayloadUUID"] = PROXY_UUID
    profile["PayloadContent"][4]["PayloadIdentifier"] = f"{ORG}.proxy"
    assert validate_profile(profile) == [
        f"profile: PayloadIdentifier '{ORG}.proxy' is used 2 times",
        f"profile: PayloadUUID '{PROXY_UUID}' is used 2 times",
    ]


# Finding the fixtures


def test_fixtures_dir_defaults_next_to_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FIXTURES_ENV, raising=False)
    repo_root = Path(__file__).resolve().parent.parent
    assert fixtures_dir() == repo_root.parent / "shared" / "fixtures"


def test_missing_fixtures_skip_with_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=FIXTURES_ENV):
        require_fixtures()


def test_missing_fixtures_fail_when_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        require_fixtures()


def test_validating_without_fixtures_skips_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A test that validates without asking for the fixture first must not crash on a bare clone.
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception):
        validate_payload(proxy_payload())
