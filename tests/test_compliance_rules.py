"""Each compliance rule just inside and just outside its thresholds (pure: no database)."""

from datetime import UTC, datetime, timedelta

import pytest

from compliance.rules import Evidence, OsCatalogue, evaluate
from mdm.inventory.models import InstalledApp, MalwareStatus, ReportedInventory
from profiles.planning import AppSpec, ProfileSpec

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
SNAPSHOT = {"os_version": "17.5.1", "passcode_set": True, "jailbroken": False, "malware_protection": None}
DEFAULTS = {
    "required_apps": (True, {}),
    "profiles_present": (True, {}),
    "os_supported": (True, {}),
    "os_updates": (True, {"grace_days": 14}),
    "passcode": (True, {"min_length": 6}),
    "malware_protection": (True, {"max_definitions_age_days": 7}),
    "not_jailbroken": (True, {}),
    "checked_in_recently": (True, {"days": 7, "unknown_until_days": 30}),
    "age_rating": (False, {}),
}


def evidence(snapshot=SNAPSHOT, apps=None, profiles=None, **changes) -> Evidence:  # type: ignore[no-untyped-def]
    base = {
        "device_id": "d",
        "platform": "ipados",
        "os_version": "17.5.1",
        "last_checkin_at": NOW - timedelta(hours=1),
        "enrolled_at": NOW - timedelta(days=60),
        "inventory": reported(snapshot, apps or {}, profiles or {}),
        "desired_profiles": [],
        "desired_apps": [],
    }
    return Evidence(**{**base, **changes})


def reported(snapshot: dict | None, apps: dict[str, dict], profiles: dict[str, int | None]) -> ReportedInventory | None:
    """The typed inventory a device with these reported facts has (None: it never reported)."""
    if snapshot is None:
        return None
    malware = snapshot.get("malware_protection")
    return ReportedInventory(
        os_version=snapshot.get("os_version"),
        passcode_set=snapshot.get("passcode_set"),
        passcode_length=snapshot.get("passcode_length"),
        passcode_compliant=snapshot.get("passcode_compliant"),
        jailbroken=snapshot.get("jailbroken"),
        malware_protection=(
            MalwareStatus(malware["enabled"], datetime.fromisoformat(malware["definitions_updated_at"]))
            if malware
            else None
        ),
        apps={identifier: InstalledApp(identifier=identifier, **app) for identifier, app in apps.items()},
        profiles=profiles,
    )


def failures(e: Evidence, os: OsCatalogue | None = None, rules=None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    _, found = evaluate(e, rules or DEFAULTS, NOW, os or OsCatalogue())
    return {f["rule"]: f["detail"] for f in found}


def test_a_healthy_device_is_compliant():
    assert evaluate(evidence(), DEFAULTS, NOW, OsCatalogue()) == ("compliant", [])


def test_before_the_first_inventory_a_device_is_unknown_until_it_has_been_silent_30_days():
    fresh = evidence(snapshot=None, last_checkin_at=None, enrolled_at=NOW - timedelta(days=29, hours=23))
    assert evaluate(fresh, DEFAULTS, NOW, OsCatalogue()) == ("unknown", [])
    silent = evidence(snapshot=None, last_checkin_at=None, enrolled_at=NOW - timedelta(days=30, seconds=1))
    status, found = evaluate(silent, DEFAULTS, NOW, OsCatalogue())
    assert status == "non_compliant"
    assert found[0]["rule"] == "checked_in_recently"


@pytest.mark.parametrize(
    ("age", "fails"), [(timedelta(days=7) - timedelta(seconds=1), False), (timedelta(days=7, seconds=1), True)]
)
def test_checked_in_recently_boundary(age, fails):
    assert ("checked_in_recently" in failures(evidence(last_checkin_at=NOW - age))) is fails


def test_required_apps_missing_unmanaged_and_outdated():
    apps = [
        AppSpec("a1", "com.maths", "ios", False, "2.1"),
        AppSpec("a2", "com.reader", "ios", False),
        AppSpec("a3", "com.science", "ios", False, "3.0"),
    ]
    reported_apps = {
        "com.reader": {"version": "1.0", "managed": False},
        "com.science": {"version": "2.9.9", "managed": True},
    }
    detail = failures(evidence(desired_apps=apps, apps=reported_apps))["required_apps"]
    assert detail == "com.maths missing; com.reader not managed; com.science 2.9.9 below 3.0"
    just_enough = {"com.science": {"version": "3.0", "managed": True}}
    assert "required_apps" not in failures(evidence(desired_apps=apps[2:], apps=just_enough))


def test_profiles_present_catches_a_removed_or_old_filter():
    proxy = ProfileSpec("p1", "uk.sch.proxy", 3, False)
    assert failures(evidence(desired_profiles=[proxy]))["profiles_present"] == "uk.sch.proxy missing"
    old = {"uk.sch.proxy": 2}
    assert (
        failures(evidence(desired_profiles=[proxy], profiles=old))["profiles_present"]
        == "uk.sch.proxy at version 2, not 3"
    )
    current = {"uk.sch.proxy": 3}
    assert "profiles_present" not in failures(evidence(desired_profiles=[proxy], profiles=current))


def test_os_supported_boundary():
    os = OsCatalogue(minimum={"ipados": "16.0"})
    assert "os_supported" not in failures(evidence(os_version="16.0"), os)
    assert "os_supported" in failures(evidence(os_version="15.8.3"), os)


def test_os_updates_within_14_days():
    def catalogue(released_days_ago: float) -> OsCatalogue:
        return OsCatalogue(
            releases={
                ("ipados", "17"): [
                    ("17.5.1", NOW - timedelta(days=30)),
                    ("17.6", NOW - timedelta(days=released_days_ago)),
                ]
            }
        )

    assert "os_updates" not in failures(evidence(os_version="17.5.1"), catalogue(14 - 1 / 86400))
    assert "os_updates" in failures(evidence(os_version="17.5.1"), catalogue(14 + 1 / 86400))
    assert "os_updates" not in failures(evidence(os_version="17.6"), catalogue(20))
    behind = failures(evidence(os_version="17.4"), catalogue(3))["os_updates"]
    assert "behind 17.5.1" in behind  # the newer 17.6 is still inside its 14 days; 17.5.1 is not
    newer_line = OsCatalogue(releases={("ipados", "18"): [("18.1", NOW - timedelta(days=60))]})
    assert "os_updates" not in failures(evidence(os_version="17.5.1"), newer_line)


def test_passcode_set_and_length_boundary():
    assert failures(evidence(snapshot={**SNAPSHOT, "passcode_set": False}))["passcode"] == "no passcode is set"
    assert "passcode" not in failures(evidence(snapshot={**SNAPSHOT, "passcode_length": 6}))
    assert "passcode" in failures(evidence(snapshot={**SNAPSHOT, "passcode_length": 5}))
    assert "passcode" not in failures(evidence(snapshot={**SNAPSHOT, "passcode_set": None}))


def test_a_passcode_the_device_says_falls_short_of_the_profile_fails():
    failed = failures(evidence(snapshot={**SNAPSHOT, "passcode_compliant": False}))
    assert failed["passcode"] == "the passcode does not meet the school's passcode profile"
    assert "passcode" not in failures(evidence(snapshot={**SNAPSHOT, "passcode_compliant": True}))


def test_malware_protection_where_reported():
    def protection(enabled: bool, days: float) -> dict:
        updated = (NOW - timedelta(days=days)).isoformat()
        return {**SNAPSHOT, "malware_protection": {"enabled": enabled, "definitions_updated_at": updated}}

    assert "malware_protection" not in failures(evidence())  # not reported by the platform
    assert "malware_protection" not in failures(evidence(snapshot=protection(True, 7 - 1 / 86400)))
    assert "malware_protection" in failures(evidence(snapshot=protection(True, 7 + 1 / 86400)))
    assert failures(evidence(snapshot=protection(False, 0)))["malware_protection"] == "malware protection is off"


def test_jailbroken():
    assert "not_jailbroken" in failures(evidence(snapshot={**SNAPSHOT, "jailbroken": True}))


def test_age_rating_is_off_by_default_and_checks_ratings_when_on():
    reported_apps = {
        "com.social": {"version": "1.0", "managed": False},
        "com.maths": {"version": "1.0", "managed": True},
    }
    e = evidence(apps=reported_apps, age=12, app_ratings={"com.social": 13, "com.maths": 4})
    assert "age_rating" not in failures(e)
    on = {**DEFAULTS, "age_rating": (True, {})}
    assert failures(e, rules=on)["age_rating"] == "apps rated above the learner's age (12): com.social"
    assert "age_rating" not in failures(evidence(apps=reported_apps, age=13, app_ratings={"com.social": 13}), rules=on)


def test_a_disabled_rule_is_not_judged():
    off = {**DEFAULTS, "not_jailbroken": (False, {})}
    assert evaluate(evidence(snapshot={**SNAPSHOT, "jailbroken": True}), off, NOW, OsCatalogue())[0] == "compliant"
