"""Settings from the environment (prefix MDM_), as the operator's contract in API.md describes."""

import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_WORKERS = 64


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MDM_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Holds the SQLite file, the CA and keys.")
    database_url: str | None = Field(None, description="Default: SQLite file in the data directory.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Worker processes of `mdm serve`, each with its own connections and scheduler (PostgreSQL only when
    # above 1: see `mdm serve --help`). More than the machine has cores only adds memory.
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="Processes serving the API (`mdm serve --workers`).")
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
    # How long finished job runs and delivered webhook rows are kept before the daily prune deletes them.
    retention_days: int = Field(90, ge=1, le=36500)
    # OS release data for compliance (the macadmins SOFA feeds); an empty value turns that feed off.
    os_feed_ios_url: str = Field(
        "https://sofafeed.macadmins.io/v1/ios_data_feed.json", description="Fills both iOS and iPadOS."
    )
    os_feed_macos_url: str = "https://sofafeed.macadmins.io/v1/macos_data_feed.json"
    webhook_allowed_hosts: str = Field(
        "",
        description=(
            "Internal webhook receivers the operator trusts, comma-separated: host names (matched exactly, "
            "whatever they resolve to) and/or addresses and CIDR networks (e.g. `mis.school.internal, "
            "10.20.0.0/16`). Webhooks otherwise go to public addresses only: a URL whose host is or resolves "
            "to a loopback, private, link-local, shared, multicast, reserved or cloud metadata address is "
            "refused when it is registered and again at each delivery."
        ),
    )
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
    # Behind a TLS proxy that checks Apple devices' client certificates and passes them on in RFC 9440's
    # Client-Cert header: only then may that header stand in for the Mdm-Signature (anyone can send it).
    trust_client_cert_header: bool = False
    # APNs (mdm/channel/apple/push.py): Apple's production gateway. The gateway's certificate is always
    # verified: against the system's trust store, or the CA file given (a TLS-inspecting proxy's, a test's).
    apns_url: str = Field("https://api.push.apple.com", description="Apple's push gateway (HTTP/2, https only).")
    apns_ca_file: Path | None = Field(None, description="CA certificates (PEM) to verify the APNs gateway with.")
    # However many commands a device has due, it is woken at most once per interval.
    apns_push_interval_seconds: int = Field(300, ge=10, le=86400)
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

    @field_validator("apns_url")
    @classmethod
    def _https_gateway(cls, value: str) -> str:
        # The push certificate is a TLS client certificate: it only means something over TLS.
        if not value.startswith("https://"):
            raise ValueError("the APNs gateway is reached over https only, e.g. https://api.push.apple.com")
        return value.rstrip("/")

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _names_and_networks(cls, value: str) -> str:
        _allowed_hosts(value)  # refuse a typo at start-up rather than refuse every delivery later
        return value

    @property
    def webhook_allowed_names(self) -> frozenset[str]:
        return _allowed_hosts(self.webhook_allowed_hosts)[0]

    @property
    def webhook_allowed_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        return _allowed_hosts(self.webhook_allowed_hosts)[1]

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


_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _allowed_hosts(value: str) -> tuple[frozenset[str], tuple[IPv4Network | IPv6Network, ...]]:
    """MDM_WEBHOOK_ALLOWED_HOSTS split into host names (lower case, no trailing dot) and networks."""
    names, networks = set(), []
    for entry in filter(None, (part.strip().lower().rstrip(".") for part in value.split(","))):
        if _HOST_NAME.fullmatch(entry) and not entry.replace(".", "").isdigit():
            names.add(entry)
            continue
        try:
            networks.append(ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is neither a host name nor an address or CIDR network") from None
    return frozenset(names), tuple(networks)


@lru_cache
def get_settings() -> Settings:
    return Settings()
