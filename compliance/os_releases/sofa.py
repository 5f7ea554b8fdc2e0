"""Reading the macadmins SOFA feed (https://sofa.macadmins.io): pure parsing, no database, no network.

The feed is a JSON object whose `OSVersions` list has one item per OS line:

    {"OSVersions": [
        {"OSVersion": "17",                 # or "iOS 17", "Sonoma 14": the line's number is what counts
         "Latest": {"ProductVersion": "17.5.1", "Build": "21F90", "ReleaseDate": "2024-05-20T00:00:00Z", ...},
         "SecurityReleases": [
            {"ProductVersion": "17.5.1", "ReleaseDate": "2024-05-20T00:00:00Z", "CVEs": {...},
             "UniqueCVEsCount": 1, ...},
            ...]},
        ...]}

The parser is liberal: an entry with a missing or unreadable field is left out and counted, with the
reason among the warnings; only a document that is not a SOFA feed at all, or one with no usable
release, is refused. The oldest line in the feed is the oldest one Apple still supports.
"""

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from compliance.os_releases.models import VERSION_PATTERN
from mdm.errors import ProblemError
from mdm.validation import as_utc
from mdm.versions import version_key

MAX_WARNINGS = 20
_NUMBER = re.compile(r"\d+(?:\.\d+)*")
_VERSION = re.compile(VERSION_PATTERN)


class FeedError(ProblemError):
    """The feed could not be fetched or is not a SOFA feed: nothing was changed."""

    def __init__(self, detail: str) -> None:
        super().__init__(502, detail, title="OS release feed unusable")


@dataclass(frozen=True)
class ReleaseFact:
    version: str
    os_line: str
    released_at: datetime
    security: bool
    build: str | None = None


@dataclass
class ParsedFeed:
    releases: list[ReleaseFact]
    lines: list[str]
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def minimum_line(self) -> str | None:
        """The oldest line the feed lists: the oldest one the vendor still supports."""
        return min(self.lines, key=version_key) if self.lines else None


def decode_feed(content: bytes, url: str) -> Any:
    try:
        return json.loads(content)
    except UnicodeDecodeError as exc:
        raise FeedError(f"The feed at {url} is not UTF-8 text.") from exc
    except json.JSONDecodeError as exc:
        raise FeedError(f"The feed at {url} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from exc


def parse_feed(document: Any, url: str) -> ParsedFeed:
    if not isinstance(document, dict) or not isinstance(document.get("OSVersions"), list):
        raise FeedError(f"The document at {url} is not a SOFA feed: it has no `OSVersions` list.")
    parsed = ParsedFeed(releases=[], lines=[])
    by_version: dict[str, ReleaseFact] = {}

    def skip(reason: str) -> None:
        parsed.skipped += 1
        if len(parsed.warnings) < MAX_WARNINGS:
            parsed.warnings.append(reason)

    for index, item in enumerate(document["OSVersions"]):
        where = f"OSVersions[{index}]"
        if not isinstance(item, dict):
            skip(f"{where} is not an object")
            continue
        line = _line_of(item)
        if line is None:
            skip(f"{where}: no OS line in OSVersion {item.get('OSVersion')!r}")
            continue
        parsed.lines.append(line)
        entries: list[tuple[str, Any, bool]] = []
        releases = item.get("SecurityReleases")
        if isinstance(releases, list):
            entries += [(f"{where}.SecurityReleases[{i}]", entry, True) for i, entry in enumerate(releases)]
        elif releases is not None:
            skip(f"{where}.SecurityReleases is not a list")
        if item.get("Latest") is not None:
            entries.append((f"{where}.Latest", item["Latest"], False))
        for entry_where, entry, listed_as_security in entries:
            fact = _fact(entry, line, listed_as_security)
            if isinstance(fact, str):
                skip(f"{entry_where}: {fact}")
                continue
            known = by_version.get(fact.version)
            by_version[fact.version] = fact if known is None else _merge(known, fact)
    if not by_version:
        raise FeedError(f"The feed at {url} lists no usable release ({parsed.skipped} entries left out).")
    parsed.releases = sorted(by_version.values(), key=lambda fact: version_key(fact.version))
    return parsed


def _line_of(item: dict[str, Any]) -> str | None:
    """The line's number from "17", "iOS 17" or "Sonoma 14"; else the major of its latest version."""
    raw = item.get("OSVersion")
    numbers = _NUMBER.findall(str(raw)) if isinstance(raw, str | int) and not isinstance(raw, bool) else []
    if numbers:
        return numbers[-1]
    latest = item.get("Latest")
    version = latest.get("ProductVersion") if isinstance(latest, dict) else None
    if isinstance(version, str) and _VERSION.fullmatch(version.strip()):
        return version.strip().split(".")[0]
    return None


def _fact(entry: Any, line: str, listed_as_security: bool) -> ReleaseFact | str:
    """The release an entry describes, or why it cannot be used."""
    if not isinstance(entry, dict):
        return "not an object"
    version = entry.get("ProductVersion")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.strip():
        return "no ProductVersion"
    version = version.strip()
    if not _VERSION.fullmatch(version):
        return f"ProductVersion {version!r} is not a plain version number"
    if version.split(".")[: line.count(".") + 1] != line.split("."):
        return f"ProductVersion {version} is not in line {line}"
    released_at = _datetime(entry.get("ReleaseDate"))
    if released_at is None:
        return f"{version}: no readable ReleaseDate ({entry.get('ReleaseDate')!r})"
    build = entry.get("Build")
    build = (build.strip()[:50] or None) if isinstance(build, str) else None
    return ReleaseFact(version, line, released_at, _is_security(entry, listed_as_security), build)


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value.strip()))
    except ValueError:  # unreadable, or beyond what UTC can hold
        return None


def _is_security(entry: dict[str, Any], listed_as_security: bool) -> bool:
    """A release with published CVEs; one in SecurityReleases that says nothing of CVEs counts too."""
    cves, count = entry.get("CVEs"), entry.get("UniqueCVEsCount")
    if (isinstance(cves, dict | list) and len(cves) > 0) or (
        isinstance(count, int) and not isinstance(count, bool) and count > 0
    ):
        return True
    return listed_as_security and cves is None and count is None


def _merge(known: ReleaseFact, other: ReleaseFact) -> ReleaseFact:
    """The same version listed twice (as Latest and as a security release): keep what each knows."""
    return ReleaseFact(
        version=known.version,
        os_line=known.os_line,
        released_at=min(known.released_at, other.released_at),
        security=known.security or other.security,
        build=known.build or other.build,
    )
