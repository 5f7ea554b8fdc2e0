"""Settings from the environment (prefix MDM_), as the operator's contract in API.md describes."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MDM_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Holds the SQLite file, the CA and keys.")
    database_url: str | None = Field(None, description="Default: SQLite file in the data directory.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = Field(None, description="URL devices use to reach the service.")
    timezone: str = "Europe/London"
    scheduler: Literal["on", "off"] = "on"
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # CSV exports from an MIS are far larger than any JSON request; they get their own ceiling.
    max_import_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    ca_passphrase: SecretStr | None = Field(None, description="Encrypts the CA key on disk.")
    device_certificate_days: int = Field(397, ge=1, le=3650)
    checkin_interval_seconds: int = Field(14400, ge=60)
    # A command delivered but unanswered this long is delivered again at the next check-in.
    command_redelivery_seconds: int = Field(900, ge=10)
    # How long a replica's claim on a scheduled job outlives its last sign of life before another takes over.
    job_lease_seconds: int = Field(300, ge=1, le=86400)
    # OS release data for compliance (the macadmins SOFA feeds); an empty value turns that feed off.
    os_feed_ios_url: str = Field(
        "https://sofafeed.macadmins.io/v1/ios_data_feed.json", description="Fills both iOS and iPadOS."
    )
    os_feed_macos_url: str = "https://sofafeed.macadmins.io/v1/macos_data_feed.json"
    # Abuse limits (mdm/ratelimit.py): only refused credentials and enrolment attempts are counted,
    # per client address and per credential, in each replica's memory. "off" for a trusted network only.
    rate_limits: Literal["on", "off"] = "on"
    auth_failures_per_address: int = Field(30, ge=1)
    auth_failures_per_credential: int = Field(10, ge=1)
    auth_failure_window_seconds: int = Field(60, ge=1)
    # A whole cart of iPads behind one school NAT address enrols at once; guessing tokens does not.
    enroll_attempts_per_address: int = Field(300, ge=1)
    enroll_failures_per_address: int = Field(20, ge=1)
    enroll_failures_per_token: int = Field(5, ge=1)
    enroll_window_seconds: int = Field(300, ge=1)
    # Proxies whose X-Forwarded-For names the client (uvicorn's --forwarded-allow-ips, comma-separated);
    # unset keeps uvicorn's default (its FORWARDED_ALLOW_IPS variable, else loopback); empty trusts none.
    forwarded_allow_ips: str | None = None
    # Records in one CSV import (people, devices, leavers); a bigger file is refused with 413, to be split.
    import_max_rows: int = Field(200_000, ge=1)
    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name like Europe/London") from exc
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mdm.sqlite3').resolve()}"

    @property
    def ca_passphrase_value(self) -> str | None:
        value = self.ca_passphrase.get_secret_value() if self.ca_passphrase else ""
        return value or None

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
