"""OS releases and supported minimums: what the compliance rules ask, and how the data gets in.

The rules ask set-wise: `latest_by_line`, `releases_by_line` and `minimum_supported_all` load everything
a whole run needs in one query each; `required_from` then judges one device without the database.
`required_version` and `minimum_supported` are the same answers for a single device or platform.

The data comes from the macadmins SOFA feed (Apple platforms, synced daily: `sync_from_feed`) or from
an admin (`load_file`, or POST /api/v1/os-releases: `load_document`) for any platform. A release is
upserted by (platform, version): the last source to describe it wins, except that a feed never erases
a build number it does not know. A minimum supported version set by an admin is kept by the feed,
until the admin forgets it (`"version": null`).
"""

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from sqlmodel import Session, col, select

from compliance.os_releases.models import (
    LoadResult,
    MinimumSupportedIn,
    OsRelease,
    OsReleaseIn,
    OsReleasePublic,
    OsSupport,
    OsSupportPublic,
    ReleaseSource,
    SyncResult,
    WriteCounts,
)
from compliance.os_releases.sofa import FeedError, ReleaseFact, decode_feed, parse_feed
from mdm.actor import SYSTEM, Actor, cli_actor
from mdm.audit.service import record
from mdm.categories import Platform
from mdm.database import Database
from mdm.errors import Invalid, ProblemError
from mdm.ids import utcnow
from mdm.pagination import Page, PageParams, bad_cursor, decode_cursor, encode_cursor
from mdm.settings import Settings
from mdm.versions import version_key

log = logging.getLogger("compliance.os_releases")

DEFAULT_GRACE_DAYS = 14  # Cyber Essentials: high and critical updates within 14 days
MANUAL_SOURCES = frozenset({ReleaseSource.file, ReleaseSource.api})
USER_AGENT = "school-mdm/0.1 (OS release sync)"  # SOFA asks integrations to name themselves
FEED_TIMEOUT_SECONDS = 30
MAX_FEED_BYTES = 64 * 2**20  # SOFA's macOS feed, the larger, is a few MB
MAX_REPORTED_ERRORS = 1000

LineKey = tuple[str, str]  # (platform, os_line)


# --- Versions and lines -----------------------------------------------------------------------------


def line_of(version: str, lines: Iterable[str] = ()) -> str:
    """The line a device's version belongs to: the longest known line it starts with, else its first number.

    "17.5.1" is in line "17"; with Windows lines such as "10.0.22631" loaded, "10.0.22631.3447" is in
    that one rather than in "10".
    """
    parts = version.strip().split(".")
    best: list[str] = []
    for line in lines:
        line_parts = line.split(".")
        if parts[: len(line_parts)] == line_parts and len(line_parts) > len(best):
            best = line_parts
    return ".".join(best) if best else parts[0]


def required_from(
    releases: Iterable[tuple[str, datetime]],
    device_version: str | None,
    now: datetime,
    grace_days: int = DEFAULT_GRACE_DAYS,
) -> str | None:
    """Of one line's releases, the newest published more than `grace_days` before `now`, if the device is below it.

    None means nothing is required of the device: it is already there, or every newer release is
    still within its grace period. A release published exactly `grace_days` ago is still within it.
    """
    if not device_version or not device_version.strip():
        return None
    cutoff = now - timedelta(days=grace_days)
    due = [version for version, released_at in releases if released_at < cutoff]
    if not due:
        return None
    newest = max(due, key=version_key)
    return newest if version_key(device_version) < version_key(newest) else None


# --- What the compliance rules ask --------------------------------------------------------------------


def latest_by_line(session: Session, as_of: datetime) -> dict[LineKey, tuple[str, datetime]]:
    """Per (platform, os_line), the newest version published at or before `as_of`, with its date."""
    statement = select(OsRelease.platform, OsRelease.os_line, OsRelease.version, OsRelease.released_at).where(
        OsRelease.released_at <= as_of
    )
    latest: dict[LineKey, tuple[str, datetime]] = {}
    for platform, line, version, released_at in session.exec(statement):
        known = latest.get((platform, line))
        if known is None or version_key(version) > version_key(known[0]):
            latest[(platform, line)] = (version, released_at)
    return latest


def releases_by_line(
    session: Session, platform: str | None = None, *, security_only: bool = False
) -> dict[LineKey, list[tuple[str, datetime]]]:
    """Per (platform, os_line), every release as (version, released_at), oldest version first.

    One query for a whole compliance run; `required_from` then judges each device.
    """
    statement = select(OsRelease.platform, OsRelease.os_line, OsRelease.version, OsRelease.released_at)
    if platform is not None:
        statement = statement.where(OsRelease.platform == platform)
    if security_only:
        statement = statement.where(col(OsRelease.security).is_(True))
    lines: dict[LineKey, list[tuple[str, datetime]]] = {}
    for row_platform, line, version, released_at in session.exec(statement):
        lines.setdefault((row_platform, line), []).append((version, released_at))
    for releases in lines.values():
        releases.sort(key=lambda release: version_key(release[0]))
    return lines


def required_version(
    session: Session,
    platform: str,
    device_version: str | None,
    now: datetime,
    grace_days: int = DEFAULT_GRACE_DAYS,
    *,
    security_only: bool = False,
) -> str | None:
    """The version a device on `device_version` must be on by now, or None when nothing is required.

    Only the device's own line counts: a newer line (iOS 18 for a device on 17.x) is an upgrade, not
    an update. With `security_only`, only security releases are required.
    """
    if not device_version or not device_version.strip():
        return None
    known_lines = session.exec(select(OsRelease.os_line).where(OsRelease.platform == platform).distinct()).all()
    line = line_of(device_version, known_lines)
    releases = releases_by_line(session, platform, security_only=security_only).get((platform, line), [])
    return required_from(releases, device_version, now, grace_days)


def minimum_supported(session: Session, platform: str) -> str | None:
    """The oldest version the vendor still supports on this platform, or None when unknown."""
    row = session.get(OsSupport, platform)
    return row.minimum_version if row else None


def minimum_supported_all(session: Session) -> dict[str, str]:
    """Per platform, the oldest version still supported; platforms with no data are absent."""
    return dict(session.exec(select(OsSupport.platform, OsSupport.minimum_version)).all())


# --- Listing ------------------------------------------------------------------------------------------


def list_releases(session: Session, platform: str | None = None, os_line: str | None = None) -> list[OsRelease]:
    """By platform, then newest version first."""
    statement = select(OsRelease)
    if platform is not None:
        statement = statement.where(OsRelease.platform == platform)
    if os_line is not None:
        statement = statement.where(OsRelease.os_line == os_line)
    rows = list(session.exec(statement))
    rows.sort(key=lambda row: version_key(row.version), reverse=True)
    rows.sort(key=lambda row: row.platform)  # stable: newest first within each platform
    return rows


def list_release_page(
    session: Session, page: PageParams, platform: str | None = None, os_line: str | None = None
) -> Page[OsReleasePublic]:
    """A page of `list_releases`. Not keyset: version order ("17.10" after "17.9") is not the database's order,
    so the cursor names the last release shown and the page starts after it."""
    rows = list_releases(session, platform, os_line)
    start = 0
    if page.cursor is not None:
        platform_after, _, version_after = decode_cursor(page.cursor).partition("/")
        start = next(
            (i + 1 for i, r in enumerate(rows) if (r.platform, r.version) == (platform_after, version_after)), -1
        )
        if start < 0:
            raise bad_cursor()
    items = rows[start : start + page.limit]
    more = start + page.limit < len(rows)
    cursor = encode_cursor(f"{items[-1].platform}/{items[-1].version}") if more and items else None
    return Page(items=[to_public(row) for row in items], next_cursor=cursor)


def list_support(session: Session) -> list[OsSupport]:
    return list(session.exec(select(OsSupport).order_by(OsSupport.platform)))


def to_public(row: OsRelease) -> OsReleasePublic:
    return OsReleasePublic.model_validate(row, from_attributes=True)


def support_to_public(row: OsSupport) -> OsSupportPublic:
    return OsSupportPublic.model_validate(row, from_attributes=True)


# --- Writing ------------------------------------------------------------------------------------------


def _upsert_releases(session: Session, rows: Sequence[tuple[str, ReleaseFact]], source: ReleaseSource) -> WriteCounts:
    counts = WriteCounts()
    platforms = {platform for platform, _ in rows}
    existing = {
        (row.platform, row.version): row
        for row in session.exec(select(OsRelease).where(col(OsRelease.platform).in_(platforms)))
    }
    for platform, fact in rows:
        row = existing.get((platform, fact.version))
        if row is None:
            row = OsRelease(
                platform=platform,
                version=fact.version,
                os_line=fact.os_line,
                build=fact.build,
                released_at=fact.released_at,
                security=fact.security,
                source=source.value,
            )
            session.add(row)
            existing[(platform, fact.version)] = row
            counts.created += 1
            continue
        wanted = {
            "os_line": fact.os_line,
            "released_at": fact.released_at,
            "security": fact.security,
            "build": fact.build or row.build,  # a source that does not know the build does not erase it
        }
        if all(getattr(row, name) == value for name, value in wanted.items()):
            counts.unchanged += 1
            continue
        for name, value in wanted.items():
            setattr(row, name, value)
        row.source = source.value
        session.add(row)
        counts.updated += 1
    return counts


def _set_minimum(session: Session, platform: str, version: str | None, source: ReleaseSource) -> bool:
    """Sets (or with None forgets) a platform's minimum; True when that changed anything."""
    row = session.get(OsSupport, platform)
    if version is None:
        if row is None:
            return False
        session.delete(row)
        return True
    if row is not None and row.minimum_version == version and row.source == source.value:
        return False
    if row is None:
        row = OsSupport(platform=platform, minimum_version=version, updated_at=utcnow(), source=source.value)
    else:
        row.minimum_version, row.updated_at, row.source = version, utcnow(), source.value
    session.add(row)
    return True


# --- The SOFA feed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feed:
    url: str
    platforms: tuple[str, ...]


def configured_feeds(settings: Settings) -> list[Feed]:
    """The feeds in the settings; the iOS feed fills iPadOS too (same versions, same dates)."""
    feeds = [
        Feed(settings.os_feed_ios_url.strip(), (Platform.ios.value, Platform.ipados.value)),
        Feed(settings.os_feed_macos_url.strip(), (Platform.macos.value,)),
    ]
    return [feed for feed in feeds if feed.url]


def feed_client() -> httpx.Client:
    return httpx.Client(
        timeout=FEED_TIMEOUT_SECONDS,
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
    )


def fetch_feed(url: str, http: httpx.Client) -> Any:
    """The feed's JSON, read up to MAX_FEED_BYTES so that a wrong URL cannot exhaust the memory."""
    content = bytearray()
    try:
        with http.stream("GET", url) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > MAX_FEED_BYTES:
                    raise FeedError(
                        f"The feed at {url} is larger than {MAX_FEED_BYTES // 2**20} MB: is it the right URL?"
                    )
    except httpx.HTTPStatusError as exc:
        raise FeedError(f"The feed at {url} answered HTTP {exc.response.status_code}.") from exc
    except httpx.HTTPError as exc:
        raise FeedError(f"Could not fetch the feed at {url}: {exc or type(exc).__name__}.") from exc
    return decode_feed(bytes(content), url)


def sync_from_feed(
    session: Session, url: str, http: httpx.Client, platforms: Iterable[str], *, actor: Actor = SYSTEM
) -> SyncResult:
    """Fetches a SOFA feed and upserts its releases for each platform; the feed's oldest line is the minimum.

    Raises FeedError, having changed nothing, when the feed cannot be fetched, is not a SOFA feed or
    lists no usable release. Entries with missing or unreadable fields are left out and counted.
    """
    platforms = [Platform(platform).value for platform in platforms]
    if not platforms:
        raise ValueError("sync_from_feed needs at least one platform")
    parsed = parse_feed(fetch_feed(url, http), url)
    counts = _upsert_releases(
        session, [(platform, fact) for platform in platforms for fact in parsed.releases], ReleaseSource.sofa
    )
    result = SyncResult(
        url=url, platforms=platforms, **counts.model_dump(), skipped=parsed.skipped, warnings=parsed.warnings
    )
    minimum_changed = False
    if parsed.minimum_line is not None:
        for platform in platforms:
            current = session.get(OsSupport, platform)
            if current is not None and current.source in MANUAL_SOURCES:
                result.minimum_kept[platform] = current.minimum_version
                continue
            minimum_changed |= _set_minimum(session, platform, parsed.minimum_line, ReleaseSource.sofa)
            result.minimum_supported[platform] = parsed.minimum_line
    if result.created or result.updated or minimum_changed:
        summary = result.model_dump(include={"url", "platforms", "created", "updated", "skipped", "minimum_supported"})
        record(session, actor, "os_releases.sync", "os_release", None, summary)
    return result


@dataclass
class FeedOutcome:
    feed: Feed
    result: SyncResult | None = None
    error: str | None = None


def sync_configured_feeds(
    database: Database, settings: Settings, http: httpx.Client, *, actor: Actor = SYSTEM
) -> list[FeedOutcome]:
    """Syncs every configured feed, each in its own transaction: one unreachable feed spoils no other."""
    outcomes = []
    for feed in configured_feeds(settings):
        outcome = FeedOutcome(feed)
        try:
            with database.writing() as session:
                outcome.result = sync_from_feed(session, feed.url, http, feed.platforms, actor=actor)
        except ProblemError as exc:
            outcome.error = exc.detail
            log.warning("OS release feed %s not synced: %s", feed.url, exc.detail)
        except Exception as exc:  # one feed's surprise must not stop the others; the detail says what failed
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.exception("OS release feed %s not synced", feed.url)
        outcomes.append(outcome)
    return outcomes


def describe(outcome: FeedOutcome) -> str:
    """One line per feed, for the job's detail and the CLI."""
    where = f"{'+'.join(outcome.feed.platforms)} ({outcome.feed.url})"
    if outcome.result is None:
        return f"{where}: FAILED: {outcome.error}"
    r = outcome.result
    text = f"{where}: {r.created} new, {r.updated} changed, {r.unchanged} unchanged, {r.skipped} skipped"
    if r.minimum_supported:
        text += "; minimum " + ", ".join(f"{p} {v}" for p, v in r.minimum_supported.items())
    if r.minimum_kept:
        text += "; admin's minimum kept for " + ", ".join(f"{p} {v}" for p, v in r.minimum_kept.items())
    return text


# --- An admin's document (file or API) ------------------------------------------------------------------


@dataclass
class ParsedDocument:
    releases: list[OsReleaseIn]
    minimum_supported: list[MinimumSupportedIn]


def _entry_errors(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        errors.append({"field": f"{prefix}.{path}" if path else prefix, "message": message})
    return errors


def parse_document(document: Any) -> ParsedDocument:
    """Checks every entry; raises Invalid listing each bad one (by its place in the document)."""
    shape = "a JSON list of releases, or an object with `releases` and optionally `minimum_supported`"
    releases_raw: Any
    minimum_raw: Any
    if isinstance(document, list):
        releases_raw, minimum_raw = document, []
    elif isinstance(document, dict):
        unknown = sorted(set(document) - {"releases", "minimum_supported"})
        if unknown:
            raise Invalid(
                f"The document has unknown keys; it must be {shape}.",
                [{"field": key, "message": "unknown key"} for key in unknown],
            )
        releases_raw, minimum_raw = document.get("releases", []), document.get("minimum_supported", [])
    else:
        raise Invalid(f"The document must be {shape}.", [{"field": None, "message": "neither a list nor an object"}])
    errors: list[dict[str, Any]] = []
    for name, value in (("releases", releases_raw), ("minimum_supported", minimum_raw)):
        if not isinstance(value, list):
            errors.append({"field": name, "message": "must be a list"})
    if errors:
        raise Invalid(f"The document must be {shape}.", errors)

    parsed = ParsedDocument([], [])
    bad_entries = 0
    first_at: dict[Any, int] = {}
    for index, raw in enumerate(releases_raw):
        where = f"releases[{index}]"
        try:
            entry = OsReleaseIn.model_validate(raw)
        except ValidationError as exc:
            errors.extend(_entry_errors(exc, where))
            bad_entries += 1
            continue
        key = ("release", entry.platform, entry.version)
        if key in first_at:
            message = f"{entry.platform} {entry.version} is also releases[{first_at[key]}]"
            errors.append({"field": f"{where}.version", "message": message})
            bad_entries += 1
            continue
        first_at[key] = index
        parsed.releases.append(entry)
    for index, raw in enumerate(minimum_raw):
        where = f"minimum_supported[{index}]"
        try:
            minimum = MinimumSupportedIn.model_validate(raw)
        except ValidationError as exc:
            errors.extend(_entry_errors(exc, where))
            bad_entries += 1
            continue
        key = ("minimum", minimum.platform)
        if key in first_at:
            message = f"{minimum.platform} is also minimum_supported[{first_at[key]}]"
            errors.append({"field": f"{where}.platform", "message": message})
            bad_entries += 1
            continue
        first_at[key] = index
        parsed.minimum_supported.append(minimum)
    if errors:
        detail = f"{bad_entries} entr{'y is' if bad_entries == 1 else 'ies are'} invalid; nothing was loaded."
        raise Invalid(f"{detail} Fix them and load the whole document again.", errors[:MAX_REPORTED_ERRORS])
    if not parsed.releases and not parsed.minimum_supported:
        raise Invalid("The document is empty: there is nothing to load.", [{"field": "releases", "message": "empty"}])
    return parsed


def load_document(
    session: Session, document: Any, source: ReleaseSource = ReleaseSource.api, *, actor: Actor = SYSTEM
) -> LoadResult:
    """Upserts an admin's releases and minimums, all or nothing (see `OsReleaseDocument`)."""
    parsed = parse_document(document)
    facts = [
        (
            entry.platform.value,
            ReleaseFact(entry.version, entry.os_line or entry.version, entry.released_at, entry.security, entry.build),
        )
        for entry in parsed.releases
    ]
    counts = _upsert_releases(session, facts, source) if facts else WriteCounts()
    result = LoadResult(**counts.model_dump())
    minimum_changed = False
    for minimum in parsed.minimum_supported:
        minimum_changed |= _set_minimum(session, minimum.platform.value, minimum.version, source)
        result.minimum_supported[minimum.platform.value] = minimum.version
    if result.created or result.updated or minimum_changed:
        summary = {"source": source.value, **result.model_dump()}
        record(session, actor, "os_releases.load", "os_release", None, summary)
    return result


def load_file(session: Session, path: str | Path, *, actor: Actor | None = None) -> LoadResult:
    """Loads a JSON file an admin wrote (see `OsReleaseDocument`); all or nothing, like the CSV imports."""
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ProblemError(422, f"Cannot read {path}: {exc.strerror or exc}.") from exc
    try:
        document = json.loads(content)
    except UnicodeDecodeError as exc:
        raise ProblemError(422, f"{path} is not UTF-8 text (byte {exc.start} is not valid UTF-8).") from exc
    except json.JSONDecodeError as exc:
        raise Invalid(
            f"{path} is not valid JSON.",
            [{"line": exc.lineno, "field": None, "message": f"{exc.msg} (column {exc.colno})"}],
        ) from exc
    return load_document(session, document, ReleaseSource.file, actor=actor or cli_actor())
