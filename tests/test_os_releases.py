"""OS release data: the SOFA feed sync, an admin's documents, and the answers the compliance rules use.

Feeds are served by httpx.MockTransport, and once by a real HTTP server on 127.0.0.1 for the CLI:
never from the internet.
"""

import copy
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from compliance.os_releases import service
from compliance.os_releases.jobs import jobs
from compliance.os_releases.models import OsRelease, ReleaseSource
from compliance.os_releases.sofa import FeedError
from mdm.actor import Role
from mdm.errors import Invalid
from mdm.scheduler import run_slot
from mdm.versions import version_key

IOS_URL = "https://sofafeed.macadmins.io/v1/ios_data_feed.json"
MACOS_URL = "https://sofafeed.macadmins.io/v1/macos_data_feed.json"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DEVICES = ["iPad13,18", "iPad14,1", "iPhone15,2", "iPhone16,1"]


def _release(version: str, date: str, cves: dict[str, bool] | None, **extra: object) -> dict[str, object]:
    """A SecurityReleases item as SOFA writes it."""
    item: dict[str, object] = {
        "UpdateName": f"iOS {version} and iPadOS {version}",
        "ProductName": "iOS and iPadOS",
        "ProductVersion": version,
        "ReleaseDate": date,
        "ReleaseType": "OS",
        "SecurityInfo": "https://support.apple.com/en-us/121563",
        "SupportedDevices": DEVICES,
        "DaysSincePreviousRelease": 14,
    }
    if cves is not None:
        item |= {
            "CVEs": cves,
            "ActivelyExploitedCVEs": [cve for cve, exploited in cves.items() if exploited],
            "UniqueCVEsCount": len(cves),
        }
    return item | extra


def _latest(version: str, build: str, date: str) -> dict[str, object]:
    return {
        "ProductVersion": version,
        "Build": build,
        "ReleaseDate": date,
        "ExpirationDate": "2025-02-03T00:00:00Z",
        "SupportedDevices": DEVICES,
        "SecurityInfo": "https://support.apple.com/en-us/121563",
        "CVEs": {"CVE-2024-44255": False},
        "ActivelyExploitedCVEs": [],
        "UniqueCVEsCount": 1,
    }


def ios_feed() -> dict[str, object]:
    """Shaped like sofafeed.macadmins.io/v1/ios_data_feed.json: three lines, the oldest written "iOS 16"."""
    return {
        "UpdateHash": "6b6f17b76066e12ab6be5c44ebedc6ba1e9802dfedf164b782feabdc8f5504de",
        "OSVersions": [
            {
                "OSVersion": "18",
                "Latest": _latest("18.1", "22B83", "2024-10-28T00:00:00Z"),
                "SecurityReleases": [
                    _release("18.1", "2024-10-28T00:00:00Z", {"CVE-2024-44255": False, "CVE-2024-44270": False}),
                    _release("18.0.1", "2024-10-03T00:00:00Z", {"CVE-2024-44207": False}),
                    _release("18.0", "2024-09-16T00:00:00Z", {"CVE-2024-44131": False, "CVE-2024-40866": True}),
                ],
            },
            {
                "OSVersion": "17",
                "Latest": _latest("17.7.1", "21H216", "2024-10-28T00:00:00Z"),
                "SecurityReleases": [
                    _release("17.7.1", "2024-10-28T00:00:00Z", {"CVE-2024-44255": False}),
                    _release("17.7", "2024-09-16T00:00:00Z", {"CVE-2024-44131": False}),
                    _release("17.6.1", "2024-08-07T00:00:00Z", {}),  # "no published CVE entries"
                    _release("17.5.1", "2024-05-20T00:00:00Z", None),  # listed, CVEs not given
                ],
            },
            {
                "OSVersion": "iOS 16",
                "Latest": _latest("16.7.10", "20H350", "2024-08-07T00:00:00Z"),
                "SecurityReleases": [
                    _release("16.7.10", "2024-08-07T00:00:00Z", {"CVE-2024-40776": False}),
                    # A Rapid Security Response: not a plain version number, so left out and counted.
                    _release("16.5.1 (c)", "2023-07-12T00:00:00Z", {"CVE-2023-37450": True}, ReleaseType="RSR"),
                ],
            },
        ],
    }


def macos_feed() -> dict[str, object]:
    return {
        "UpdateHash": "c0ffee",
        "OSVersions": [
            {
                "OSVersion": "Sequoia 15",
                "Latest": _latest("15.1", "24B83", "2024-10-28T00:00:00Z"),
                "SecurityReleases": [_release("15.1", "2024-10-28T00:00:00Z", {"CVE-2024-44255": False})],
            },
            {
                "OSVersion": "Sonoma 14",
                "Latest": _latest("14.7.1", "23H222", "2024-10-28T00:00:00Z"),
                "SecurityReleases": [_release("14.7.1", "2024-10-28T00:00:00Z", {"CVE-2024-44255": False})],
            },
        ],
    }


IOS_RELEASES = ["16.7.10", "17.5.1", "17.6.1", "17.7", "17.7.1", "18.0", "18.0.1", "18.1"]


def feed_client(routes: dict[str, Callable[[], httpx.Response]]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = routes.get(str(request.url))
        if answer is None:
            return httpx.Response(404, text="not found")
        return answer()

    return httpx.Client(transport=httpx.MockTransport(handler))


def serving(document: object) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, json=document)


def _sync(database, document: object = None, platforms=("ios", "ipados")):  # type: ignore[no-untyped-def]
    with feed_client({IOS_URL: serving(document or ios_feed())}) as http, database.writing() as session:
        return service.sync_from_feed(session, IOS_URL, http, platforms)


def _state(database) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]], int]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        releases = connection.execute(text("SELECT * FROM os_release ORDER BY platform, version")).all()
        support = connection.execute(text("SELECT * FROM os_support ORDER BY platform")).all()
        events = connection.execute(text("SELECT count(*) FROM audit_event")).scalar_one()
    return [tuple(r) for r in releases], [tuple(s) for s in support], events


def _load(database, document: object):  # type: ignore[no-untyped-def]
    with database.writing() as session:
        return service.load_document(session, document, ReleaseSource.api)


# --- Versions -----------------------------------------------------------------------------------------


def test_versions_order_as_people_read_them():
    ordered = ["17", "17.5", "17.5.1", "17.6", "17.10", "18.0.1", "18.1", "100.0"]
    shuffled = ["18.1", "17.10", "100.0", "17.5.1", "17", "18.0.1", "17.6", "17.5"]
    assert sorted(shuffled, key=version_key) == ordered
    assert version_key("17.5") < version_key("17.5.1") < version_key("17.6") < version_key("18.0")
    assert version_key("18") == version_key("18.0") == version_key("18.0.0")
    assert version_key("17.9") < version_key("17.10")  # numbers, not text


def test_version_key_is_one_helper_shared_with_the_app_catalogue():
    from profiles import planning

    assert planning.version_key is version_key


def test_line_of_a_device_version():
    assert service.line_of("17.5.1") == "17"
    assert service.line_of("17.5.1", ["17", "18"]) == "17"
    assert service.line_of("10.0.22631.3447", ["10", "10.0.19045", "10.0.22631"]) == "10.0.22631"
    assert service.line_of("10.0.26100.1", ["10.0.19045", "10.0.22631"]) == "10"


# --- The SOFA feed ------------------------------------------------------------------------------------


def test_sync_fills_ios_and_ipados_from_the_ios_feed(database):
    result = _sync(database)
    assert (result.created, result.updated, result.unchanged) == (16, 0, 0)
    assert result.skipped == 1
    assert "16.5.1 (c)" in result.warnings[0]
    assert result.minimum_supported == {"ios": "16", "ipados": "16"}
    with database.reading() as session:
        rows = {(r.platform, r.version): r for r in session.exec(select(OsRelease))}
        assert sorted((v for p, v in rows if p == "ipados"), key=version_key) == IOS_RELEASES
        latest = rows[("ios", "18.1")]
        assert (latest.os_line, latest.build, latest.security, latest.source) == ("18", "22B83", True, "sofa")
        assert latest.released_at == datetime(2024, 10, 28, tzinfo=UTC)
        assert rows[("ios", "16.7.10")].os_line == "16"
        assert rows[("ios", "18.0.1")].build is None
        assert rows[("ios", "17.6.1")].security is False  # listed, but no published CVE entries
        assert rows[("ios", "17.5.1")].security is True  # listed as a security release, CVEs not given
        assert service.minimum_supported(session, "ios") == "16"
        assert service.minimum_supported(session, "macos") is None
        assert service.latest_by_line(session, NOW)[("ipados", "17")] == ("17.7.1", datetime(2024, 10, 28, tzinfo=UTC))


def test_sync_again_changes_nothing_and_records_nothing(database):
    _sync(database)
    before = _state(database)
    again = _sync(database)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 16)
    assert _state(database) == before  # the same rows, and no new audit event


def test_a_new_release_is_added_and_a_known_build_is_never_erased(database):
    _sync(database)
    feed = ios_feed()
    line_18 = feed["OSVersions"][0]  # type: ignore[index]
    line_18["Latest"] = _latest("18.1.1", "22B91", "2024-11-19T00:00:00Z")
    line_18["SecurityReleases"].insert(0, _release("18.1.1", "2024-11-19T00:00:00Z", {"CVE-2024-44308": True}))
    result = _sync(database, feed)
    assert (result.created, result.updated, result.unchanged) == (2, 0, 16)
    with database.reading() as session:
        assert session.get(OsRelease, ("ios", "18.1")).build == "22B83"  # no longer Latest, build kept
        assert service.latest_by_line(session, NOW)[("ios", "18")][0] == "18.1.1"
        assert service.latest_by_line(session, datetime(2024, 11, 1, tzinfo=UTC))[("ios", "18")][0] == "18.1"
    with database.read_engine.connect() as connection:
        actions = connection.execute(text("SELECT action FROM audit_event ORDER BY seq")).scalars().all()
    assert actions == ["os_releases.sync", "os_releases.sync"]


def test_macos_lines_are_read_from_their_names(database):
    with feed_client({MACOS_URL: serving(macos_feed())}) as http, database.writing() as session:
        result = service.sync_from_feed(session, MACOS_URL, http, ["macos"])
    assert result.created == 2
    with database.reading() as session:
        assert set(service.latest_by_line(session, NOW)) == {("macos", "15"), ("macos", "14")}
        assert service.minimum_supported(session, "macos") == "14"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda: httpx.Response(200, text="<html>Service Unavailable</html>"), "is not JSON"),
        (lambda: httpx.Response(200, json={"UpdateHash": "x", "Versions": []}), "no `OSVersions` list"),
        (lambda: httpx.Response(200, json=[1, 2]), "no `OSVersions` list"),
        (lambda: httpx.Response(200, json={"OSVersions": [{"OSVersion": "18", "Latest": {}}, 7]}), "no usable"),
        (lambda: httpx.Response(503, text="busy"), "answered HTTP 503"),
    ],
)
def test_a_malformed_or_failing_feed_is_refused_clearly_and_changes_nothing(database, answer, message):
    _sync(database)
    before = _state(database)
    with (
        pytest.raises(FeedError, match=message) as refused,
        feed_client({IOS_URL: answer}) as http,
        database.writing() as session,
    ):
        service.sync_from_feed(session, IOS_URL, http, ["ios", "ipados"])
    assert refused.value.status == 502
    assert IOS_URL in refused.value.detail
    assert _state(database) == before


def test_an_unreachable_feed_is_refused_clearly(database):
    def unreachable() -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with (
        pytest.raises(FeedError, match="Could not fetch") as refused,
        feed_client({IOS_URL: unreachable}) as http,
        database.writing() as session,
    ):
        service.sync_from_feed(session, IOS_URL, http, ["ios"])
    assert "Connection refused" in refused.value.detail
    assert _state(database)[0] == []


def test_a_feed_too_large_is_refused_before_it_is_all_read(database, monkeypatch):
    monkeypatch.setattr(service, "MAX_FEED_BYTES", 1000)
    with (
        pytest.raises(FeedError, match="larger than"),
        feed_client({IOS_URL: serving(ios_feed())}) as http,
        database.writing() as session,
    ):
        service.sync_from_feed(session, IOS_URL, http, ["ios"])
    assert _state(database)[0] == []


def test_entries_with_missing_fields_are_left_out_and_counted(database):
    feed = ios_feed()
    releases = feed["OSVersions"][1]["SecurityReleases"]  # type: ignore[index]
    releases.append({"ProductVersion": "17.4"})  # no date
    releases.append({"ProductVersion": "17.3", "ReleaseDate": "last Tuesday"})
    releases.append({"ReleaseDate": "2024-01-22T00:00:00Z"})  # no version
    releases.append({"ProductVersion": "16.2", "ReleaseDate": "2024-01-22T00:00:00Z"})  # wrong line
    releases.append({"ProductVersion": "17.2.1", "ReleaseDate": "2023-12-19"})  # a plain date is fine
    feed["OSVersions"].append("not an object")  # type: ignore[attr-defined]
    feed["OSVersions"].append({"OSVersion": "beta"})  # type: ignore[attr-defined]
    result = _sync(database, feed, platforms=["ios"])
    assert result.created == len(IOS_RELEASES) + 1
    assert result.skipped == 1 + 6
    warnings = "\n".join(result.warnings)
    for expected in ("17.4: no readable ReleaseDate", "'last Tuesday'", "no ProductVersion", "16.2 is not in line 17"):
        assert expected in warnings
    assert "OSVersions[3] is not an object" in warnings
    with database.reading() as session:
        assert session.get(OsRelease, ("ios", "17.2.1")).released_at == datetime(2023, 12, 19, tzinfo=UTC)


# --- What the compliance rules ask --------------------------------------------------------------------

GRACE = timedelta(days=14)


@pytest.fixture
def ios_lines(database):  # type: ignore[no-untyped-def]
    """17.5 a month old, 17.5.1 published exactly 14 days before NOW, and line 18 long out."""
    _load(
        database,
        [
            {"platform": "ios", "version": "17.4", "released_at": (NOW - timedelta(days=90)).isoformat()},
            {"platform": "ios", "version": "17.5", "released_at": (NOW - timedelta(days=30)).isoformat()},
            {"platform": "ios", "version": "17.5.1", "released_at": (NOW - GRACE).isoformat(), "security": True},
            {"platform": "ios", "version": "18.0", "released_at": (NOW - timedelta(days=60)).isoformat()},
            {"platform": "ios", "version": "18.1", "released_at": (NOW - timedelta(days=20)).isoformat()},
        ],
    )
    return database


def test_required_version_at_the_grace_boundary(ios_lines):
    with ios_lines.reading() as session:
        required = lambda version, now: service.required_version(session, "ios", version, now)  # noqa: E731
        # Published exactly 14 days ago: still within its grace period.
        assert required("17.4", NOW) == "17.5"
        assert required("17.5", NOW) is None
        # One second later it is due.
        assert required("17.4", NOW + timedelta(seconds=1)) == "17.5.1"
        assert required("17.5", NOW + timedelta(seconds=1)) == "17.5.1"
        assert required("17.5.1", NOW + timedelta(days=365)) is None  # already on the newest
        assert service.required_version(session, "ios", "17.5", NOW, grace_days=0) == "17.5.1"
        assert service.required_version(session, "ios", "17.4", NOW, security_only=True) is None


def test_a_newer_line_does_not_count_against_an_older_lines_device(ios_lines):
    later = NOW + timedelta(days=365)
    with ios_lines.reading() as session:
        assert service.required_version(session, "ios", "17.5.1", later) is None  # 18.x is an upgrade
        assert service.required_version(session, "ios", "18.0", NOW) == "18.1"
        assert service.required_version(session, "ios", "18.1", later) is None
        assert service.required_version(session, "ios", "19.0", later) is None  # a line we know nothing of
        assert service.required_version(session, "ipados", "17.4", later) is None  # no data for iPadOS
        assert service.required_version(session, "ios", None, later) is None
        assert service.required_version(session, "ios", " ", later) is None


def test_the_set_wise_answers_agree_with_the_single_device_ones(ios_lines):
    with ios_lines.reading() as session:
        lines = service.releases_by_line(session)
        assert [v for v, _ in lines[("ios", "17")]] == ["17.4", "17.5", "17.5.1"]
        assert service.required_from(lines[("ios", "17")], "17.4", NOW) == "17.5"
        assert service.required_from(lines[("ios", "17")], "17.4", NOW + timedelta(seconds=1)) == "17.5.1"
        latest = service.latest_by_line(session, NOW - timedelta(days=25))
    assert latest == {
        ("ios", "17"): ("17.5", NOW - timedelta(days=30)),
        ("ios", "18"): ("18.0", NOW - timedelta(days=60)),
    }


def test_minimum_supported_from_the_feed_an_admin_and_back(database):
    _sync(database)
    _load(
        database,
        {"minimum_supported": [{"platform": "ios", "version": "17"}, {"platform": "android", "version": "12"}]},
    )
    result = _sync(database)  # the feed keeps the admin's choice
    assert result.minimum_kept == {"ios": "17"}
    assert result.minimum_supported == {"ipados": "16"}
    with database.reading() as session:
        assert service.minimum_supported_all(session) == {"android": "12", "ios": "17", "ipados": "16"}
    _load(database, {"minimum_supported": [{"platform": "ios", "version": None}]})  # hand it back to the feed
    with database.reading() as session:
        assert service.minimum_supported(session, "ios") is None
    _sync(database)
    with database.reading() as session:
        assert service.minimum_supported(session, "ios") == "16"


# --- An admin's file ----------------------------------------------------------------------------------

GOOD_FILE = {
    "releases": [
        {"platform": "android", "version": "14", "released_at": "2023-10-04", "security": True, "build": "UP1A"},
        {
            "platform": "windows",
            "version": "10.0.22631.3447",
            "os_line": "10.0.22631",
            "released_at": "2024-04-09T17:00:00Z",
            "security": True,
        },
        {"platform": "chromeos", "version": "124.0.6367.225", "released_at": "2024-05-21T08:00:00+01:00"},
    ],
    "minimum_supported": [{"platform": "android", "version": "12"}],
}


def test_load_file_upserts_every_platform(database, tmp_path):
    path = tmp_path / "releases.json"
    path.write_text(json.dumps(GOOD_FILE))
    with database.writing() as session:
        result = service.load_file(session, path)
    assert (result.created, result.updated, result.minimum_supported) == (3, 0, {"android": "12"})
    with database.writing() as session:
        assert service.load_file(session, path).unchanged == 3
    with database.reading() as session:
        android = session.get(OsRelease, ("android", "14"))
        assert (android.os_line, android.source, android.build) == ("14", "file", "UP1A")
        assert android.released_at == datetime(2023, 10, 4, tzinfo=UTC)  # no zone means UTC
        assert session.get(OsRelease, ("chromeos", "124.0.6367.225")).released_at == datetime(
            2024, 5, 21, 7, tzinfo=UTC
        )
        assert service.required_version(session, "windows", "10.0.22631.3000", NOW) == "10.0.22631.3447"
        assert service.minimum_supported(session, "android") == "12"


def test_a_bad_file_lists_every_bad_entry_and_writes_nothing(database, tmp_path):
    document = copy.deepcopy(GOOD_FILE)
    document["releases"] += [
        {"platform": "blackberry", "version": "10.3", "released_at": "2015-01-01"},
        {"platform": "ios", "version": "17.5.1 (a)", "released_at": "2024-05-20"},
        {"platform": "ios", "version": "17.5", "os_line": "18", "released_at": "2024-05-13"},
        {"platform": "android", "version": "14", "released_at": "2023-10-05"},
        {"platform": "macos", "version": "14.5"},
        "14.5",
    ]
    document["minimum_supported"].append({"platform": "ios", "version": "seventeen"})
    path = tmp_path / "releases.json"
    path.write_text(json.dumps(document))
    with pytest.raises(Invalid) as refused, database.writing() as session:
        service.load_file(session, path)
    assert refused.value.detail.startswith("7 entries are invalid; nothing was loaded.")
    fields = {error["field"]: error["message"] for error in refused.value.extra["errors"]}
    assert "platform" in fields["releases[3].platform"] or "ios" in fields["releases[3].platform"]
    assert "is not a version" in fields["releases[4].version"]
    assert fields["releases[5]"] == "version 17.5 is not in line 18"
    assert fields["releases[6].version"] == "android 14 is also releases[0]"
    assert "required" in fields["releases[7].released_at"].lower()
    assert "releases[8]" in fields
    assert "is not a version" in fields["minimum_supported[1].version"]
    assert _state(database) == ([], [], 0)


def test_a_file_that_is_not_json_names_the_line(database, tmp_path):
    path = tmp_path / "releases.json"
    path.write_text('{"releases": [\n  {"platform": "ios",}\n]}')
    with pytest.raises(Invalid, match="not valid JSON") as refused, database.writing() as session:
        service.load_file(session, path)
    assert refused.value.extra["errors"][0]["line"] == 2


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"release": []}, "release"),
        ({"releases": {"platform": "ios"}}, "releases"),
        ("17.5", None),
        ({}, "releases"),
    ],
)
def test_documents_of_the_wrong_shape_are_refused(database, document, field):
    with pytest.raises(Invalid) as refused, database.writing() as session:
        service.load_document(session, document)
    assert refused.value.extra["errors"][0]["field"] == field


# --- The API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "read", "write"),
    [
        (Role.admin, 200, 200),
        (Role.technician, 200, 403),
        (Role.auditor, 200, 403),
        (Role.integration, 403, 403),
    ],
)
def test_who_may_read_and_load_os_releases(client, auth, role, read, write):
    assert client.get("/api/v1/os-releases", headers=auth(role)).status_code == read
    assert client.get("/api/v1/os-releases/minimum-supported", headers=auth(role)).status_code == read
    assert client.post("/api/v1/os-releases", json=GOOD_FILE, headers=auth(role)).status_code == write


def test_api_load_list_and_pages(client, auth):
    admin = auth(Role.admin)
    loaded = client.post("/api/v1/os-releases", json=GOOD_FILE, headers=admin)
    assert loaded.json() == {"created": 3, "updated": 0, "unchanged": 0, "minimum_supported": {"android": "12"}}
    more = [{"platform": "android", "version": v, "released_at": "2024-01-01"} for v in ("14.1", "13", "14.0.1")]
    assert client.post("/api/v1/os-releases", json=more, headers=admin).json()["created"] == 3
    reader = auth(Role.auditor)
    android = client.get("/api/v1/os-releases?platform=android", headers=reader).json()
    assert [item["version"] for item in android["items"]] == ["14.1", "14.0.1", "14", "13"]
    assert android["items"][0]["source"] == "api"
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/os-releases", params=params, headers=reader).json()
        seen += [(item["platform"], item["version"]) for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert seen[0] == ("android", "14.1")
    minimum = client.get("/api/v1/os-releases/minimum-supported", headers=reader).json()["items"]
    assert [(m["platform"], m["minimum_version"], m["source"]) for m in minimum] == [("android", "12", "api")]
    bad_cursor = client.get("/api/v1/os-releases?cursor=bm9wZS9ub3Bl", headers=reader)
    assert bad_cursor.status_code == 422


def test_api_refuses_a_bad_document_with_each_entry_named(client, auth):
    body = {"releases": [GOOD_FILE["releases"][0], {"platform": "ios", "version": "x", "released_at": "soon"}]}
    response = client.post("/api/v1/os-releases", json=body, headers=auth(Role.admin))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["releases[1].version", "releases[1].released_at"]
    assert client.get("/api/v1/os-releases", headers=auth(Role.admin)).json()["items"] == []
    not_json = client.post(
        "/api/v1/os-releases", content=b"{", headers={**auth(Role.admin), "content-type": "application/json"}
    )
    assert not_json.status_code == 422


# --- The daily job ------------------------------------------------------------------------------------


def _job_run(database) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with database.read_engine.connect() as connection:
        row = connection.execute(text("SELECT status, detail FROM job_run WHERE job = 'sync-os-releases'")).one()
    return row.status, row.detail


def test_the_daily_job_syncs_every_feed_and_survives_one_unreachable(settings, database):
    def unreachable() -> httpx.Response:
        raise httpx.ConnectTimeout("timed out")

    routes = {IOS_URL: serving(ios_feed()), MACOS_URL: unreachable}
    [spec] = jobs(settings, client=lambda: feed_client(routes))
    assert spec.cron == "30 4 * * *"
    assert run_slot(database, spec, "2026-11-30T04:30:00+00:00")
    status, detail = _job_run(database)
    assert status == "completed"
    assert "ios+ipados (https://sofafeed.macadmins.io/v1/ios_data_feed.json): 16 new" in detail
    assert f"macos ({MACOS_URL}): FAILED: Could not fetch the feed at {MACOS_URL}: timed out." in detail
    with database.reading() as session:
        assert service.minimum_supported_all(session) == {"ios": "16", "ipados": "16"}


def test_the_daily_job_fails_when_every_feed_failed(settings, database):
    [spec] = jobs(settings, client=lambda: feed_client({}))
    run_slot(database, spec, "2026-11-30T04:30:00+00:00")
    status, detail = _job_run(database)
    assert status == "failed"
    assert "answered HTTP 404" in detail
    assert "macos" in detail


# --- The CLI, against a real HTTP server on 127.0.0.1 ---------------------------------------------------


@pytest.fixture
def feed_server() -> Iterator[str]:
    body = json.dumps(ios_feed()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/v1/ios_data_feed.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _mdm(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    environment = {
        "MDM_DATA_DIR": str(settings.data_dir),
        "MDM_DATABASE_URL": settings.resolved_database_url,
        "PATH": "",
        **env,
    }
    command = [sys.executable, "-m", "mdm", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=60, check=False)


def test_cli_sync_list_and_load(settings, database, feed_server, tmp_path: Path):
    feeds = {
        "MDM_OS_FEED_IOS_URL": f"{feed_server}/v1/ios_data_feed.json",
        "MDM_OS_FEED_MACOS_URL": f"{feed_server}/v1/macos_data_feed.json",  # 404 here
    }
    synced = _mdm(settings, "os-releases", "sync", **feeds)
    assert synced.returncode == 1, synced.stderr  # the macOS feed failed ...
    assert "ios+ipados" in synced.stdout
    assert "16 new, 0 changed, 0 unchanged, 1 skipped; minimum ios 16, ipados 16" in synced.stdout
    assert "left out:" in synced.stderr
    assert "16.5.1 (c)" in synced.stderr
    assert "answered HTTP 404" in synced.stderr
    again = _mdm(settings, "os-releases", "sync", **{**feeds, "MDM_OS_FEED_MACOS_URL": ""})  # ... so turn it off
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 changed, 16 unchanged" in again.stdout

    listed = _mdm(settings, "os-releases", "list", "--platform", "ipados", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["version"] for row in rows if "version" in row] == list(reversed(IOS_RELEASES))
    assert {"platform": "ipados", "minimum_version": "16"}.items() <= rows[-1].items()
    table = _mdm(settings, "os-releases", "list")
    assert table.returncode == 0, table.stderr
    assert "ios: oldest supported 16" in table.stdout

    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD_FILE))
    loaded = _mdm(settings, "os-releases", "load", str(good))
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["created"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"platform": "android", "version": "15", "released_at": "someday"}]))
    refused = _mdm(settings, "os-releases", "load", str(bad))
    assert refused.returncode == 2
    assert "1 entry is invalid; nothing was loaded" in refused.stderr
    assert "releases[0].released_at" in refused.stderr
