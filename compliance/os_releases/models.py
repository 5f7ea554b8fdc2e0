import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from mdm.categories import Platform
from mdm.database import UtcDateTime
from mdm.validation import Input, UtcTime

# Dotted numbers only: anything else ("16.5.1 (a)", "UP1A.231005") would not order reliably.
VERSION_PATTERN = r"^\d{1,9}(\.\d{1,9}){0,9}$"
_VERSION = re.compile(VERSION_PATTERN)


def _dotted_numbers(value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise ValueError(f"{value!r} is not a version: use dotted numbers, like 17.5.1")
    return value


Version = Annotated[str, StringConstraints(strip_whitespace=True, max_length=50), AfterValidator(_dotted_numbers)]


class ReleaseSource(StrEnum):
    sofa = "sofa"  # the macadmins SOFA feed, synced daily
    file = "file"  # `mdm os-releases load FILE`
    api = "api"  # POST /api/v1/os-releases


class OsRelease(SQLModel, table=True):
    """One published version of an OS: the facts the `os_updates` rule measures a device against."""

    __tablename__ = "os_release"
    __table_args__ = (Index("ix_os_release_line", "platform", "os_line"),)

    platform: str = Field(primary_key=True, max_length=20)
    version: str = Field(primary_key=True, max_length=50)
    os_line: str = Field(max_length=50)  # the major version line: "17" for iOS 17.x, "14" for macOS 14
    build: str | None = Field(default=None, max_length=50)
    released_at: datetime = Field(sa_type=UtcDateTime)
    security: bool = False  # a security release (it fixes published vulnerabilities)
    source: str = Field(max_length=10)


class OsSupport(SQLModel, table=True):
    """Per platform, the oldest version its vendor still supports: the `os_supported` rule's floor."""

    __tablename__ = "os_support"

    platform: str = Field(primary_key=True, max_length=20)
    minimum_version: str = Field(max_length=50)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    source: str = Field(max_length=10)


# --- The document an admin loads (file or API) ------------------------------------------------------


class OsReleaseIn(Input):
    platform: Platform
    version: Version = PydanticField(description='Dotted numbers, e.g. "17.5.1" or "10.0.22631.3447".')
    os_line: Version | None = PydanticField(
        None, description='The line the version belongs to; default its first number ("17" for "17.5.1").'
    )
    released_at: UtcTime = PydanticField(
        description='When it was published: "2024-05-13" or "2024-05-13T17:00:00Z" (no zone means UTC).'
    )
    security: bool = PydanticField(False, description="Whether it fixes published security vulnerabilities.")
    build: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] | None = None

    @model_validator(mode="after")
    def _line_contains_version(self) -> "OsReleaseIn":
        if self.os_line is None:
            self.os_line = self.version.split(".")[0]
        elif self.version.split(".")[: self.os_line.count(".") + 1] != self.os_line.split("."):
            raise ValueError(f"version {self.version} is not in line {self.os_line}")
        return self


class MinimumSupportedIn(Input):
    platform: Platform
    version: Version | None = PydanticField(
        description='The oldest version still supported (a line like "16" means 16.0 and later). '
        "null forgets it, so that the next feed sync sets it again."
    )


class OsReleaseDocument(Input):
    """What `mdm os-releases load FILE` reads and POST /api/v1/os-releases takes.

    A bare list of releases is accepted too. All or nothing: if any entry is bad, each bad entry is
    listed and nothing is written.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "releases": [
                        {
                            "platform": "android",
                            "version": "14",
                            "released_at": "2023-10-04",
                            "security": True,
                            "build": "UP1A.231005.007",
                        },
                        {
                            "platform": "windows",
                            "version": "10.0.22631.3447",
                            "os_line": "10.0.22631",
                            "released_at": "2024-04-09",
                            "security": True,
                        },
                    ],
                    "minimum_supported": [{"platform": "android", "version": "12"}],
                }
            ]
        }
    )

    releases: list[OsReleaseIn] = PydanticField(default_factory=list)
    minimum_supported: list[MinimumSupportedIn] = PydanticField(default_factory=list)


# --- Answers ----------------------------------------------------------------------------------------


class OsReleasePublic(BaseModel):
    platform: Platform
    os_line: str
    version: str
    build: str | None
    released_at: datetime
    security: bool
    source: ReleaseSource


class OsSupportPublic(BaseModel):
    platform: Platform
    minimum_version: str
    updated_at: datetime
    source: ReleaseSource


class WriteCounts(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class LoadResult(WriteCounts):
    minimum_supported: dict[str, str | None] = PydanticField(
        default_factory=dict, description="Per platform, the minimum set (null: forgotten)."
    )


class SyncResult(WriteCounts):
    url: str
    platforms: list[str]
    skipped: int = PydanticField(0, description="Feed entries left out for missing or unreadable fields.")
    warnings: list[str] = PydanticField(default_factory=list, description="Why, for the first few left out.")
    minimum_supported: dict[str, str] = PydanticField(
        default_factory=dict, description="Per platform, the oldest line in the feed."
    )
    minimum_kept: dict[str, str] = PydanticField(
        default_factory=dict,
        description="Per platform, a minimum an admin set (file or API), which the feed does not replace.",
    )
