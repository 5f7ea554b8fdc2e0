"""Waking Apple devices through APNs: one HTTP/2 POST per device, the school's certificate as TLS client.

A push carries no command. It only tells a device to connect (`{"mdm": PushMagic}`), and the device
then collects what is due from the queue. So a push that fails loses nothing: the commands stay queued
and the next push, or the device's own next connection, delivers them. That is why every failure here
ends in a result, never in a change to a command.

Apple's answers, and what each means here:
- 200: accepted.
- 410, or 400 BadDeviceToken / DeviceTokenNotForTopic: the token is dead (the app was removed, the
  device erased, or it enrolled under another topic); no push until the device's next TokenUpdate.
- 429: too many pushes to that one token; that device waits (per replica, doubling, Retry-After honoured).
- 5xx, or no answer: the gateway is struggling; this replica waits before any push (same rule).
- anything else (403 bad certificate, 400 BadTopic ...): refused, with Apple's reason for the operator.

The gateway's TLS certificate is always verified (the system's trust store, or MDM_APNS_CA_FILE).
"""

import email.utils
import json
import re
import secrets
import ssl
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization

from mdm.backoff import doubling
from mdm.channel.apple.push_certificate import SenderCertificate
from mdm.ids import utcnow
from mdm.sealing import Sealer
from mdm.settings import Settings

DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})
FIRST_WAIT = timedelta(seconds=5)
LONGEST_WAIT = timedelta(minutes=30)
REQUEST_TIMEOUT_SECONDS = 10.0
# The token came from a device (TokenUpdate) and goes into the request's path: hex and nothing else.
TOKEN = re.compile(r"[0-9a-fA-F]{16,200}")


class Outcome(StrEnum):
    accepted = "accepted"
    gone = "gone"  # the token is dead
    throttled = "throttled"  # this device must wait (429)
    unreachable = "unreachable"  # the gateway must wait (5xx, no answer)
    refused = "refused"  # APNs refused for another reason; `reason` says which


@dataclass(frozen=True)
class PushTarget:
    device_id: str
    token: str  # hex, as the device's TokenUpdate gave it (base64 decoded)
    push_magic: str


@dataclass(frozen=True)
class PushResult:
    outcome: Outcome
    reason: str | None = None
    retry_after: timedelta | None = None


@dataclass
class _Wait:
    failures: int = 0
    until: datetime | None = None


class ApnsGateway:
    """One replica's connection to APNs and its back-off; shared by the push job and the API."""

    def __init__(self, url: str, sealer: Sealer, ca_file: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self._sealer = sealer
        self._ca_file = ca_file
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._fingerprint: str | None = None
        self._gateway = _Wait()
        self._devices: dict[str, _Wait] = {}

    @classmethod
    def from_settings(cls, settings: Settings, sealer: Sealer) -> "ApnsGateway":
        return cls(settings.apns_url, sealer, settings.apns_ca_file)

    def push(self, certificate: SenderCertificate, target: PushTarget) -> PushResult:
        now = utcnow()
        if not TOKEN.fullmatch(target.token):
            return PushResult(Outcome.gone, "the device's push token is not hex; it needs a new TokenUpdate")
        waiting = self._waiting(target.token, now)
        if waiting is not None:
            return waiting
        if certificate.not_after <= now:
            return PushResult(Outcome.refused, f"the push certificate expired on {certificate.not_after:%Y-%m-%d}")
        try:
            response = self._client_for(certificate).post(
                f"{self.url}/3/device/{target.token}",
                content=json.dumps({"mdm": target.push_magic}, separators=(",", ":")),
                headers={"apns-topic": certificate.topic, "apns-push-type": "mdm", "content-type": "application/json"},
            )
        except (httpx.TransportError, ssl.SSLError) as exc:
            return self._gateway_fails(now, None, f"APNs could not be reached: {exc or type(exc).__name__}")
        return self._read(response, target.token, now)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client, self._fingerprint = None, None

    # --- answers and back-off ------------------------------------------------------------------------

    def _read(self, response: httpx.Response, token: str, now: datetime) -> PushResult:
        reason = _reason(response)
        status = response.status_code
        if status == 200:
            with self._lock:
                self._gateway = _Wait()
                self._devices.pop(token, None)
            return PushResult(Outcome.accepted)
        if status == 410 or (status == 400 and reason in DEAD_TOKEN_REASONS):
            return PushResult(Outcome.gone, reason or "Unregistered")
        retry_after = _retry_after(response, now)
        if status == 429:
            with self._lock:
                wait = self._devices.setdefault(token, _Wait())
                until = _wait_more(wait, now, retry_after)
                self._forget_old_waits(now)
            return PushResult(Outcome.throttled, reason or "TooManyRequests", until - now)
        if status >= 500:
            return self._gateway_fails(now, retry_after, f"APNs answered {status} {reason or ''}".strip())
        return PushResult(Outcome.refused, f"APNs answered {status} {reason or ''}".strip())

    def _gateway_fails(self, now: datetime, retry_after: timedelta | None, reason: str) -> PushResult:
        with self._lock:
            until = _wait_more(self._gateway, now, retry_after)
        return PushResult(Outcome.unreachable, reason, until - now)

    def _waiting(self, token: str, now: datetime) -> PushResult | None:
        with self._lock:
            gateway, device = self._gateway.until, self._devices.get(token, _Wait()).until
        if gateway is not None and gateway > now:
            return PushResult(Outcome.unreachable, "APNs is failing: this replica waits before pushing", gateway - now)
        if device is not None and device > now:
            return PushResult(Outcome.throttled, "APNs asked for fewer pushes to this device", device - now)
        return None

    def _forget_old_waits(self, now: datetime) -> None:
        # A long-finished wait tells nothing; keeps the map as small as the set of throttled devices.
        for token in [t for t, w in self._devices.items() if w.until is not None and w.until <= now - LONGEST_WAIT]:
            del self._devices[token]

    # --- the TLS client ------------------------------------------------------------------------------

    def _client_for(self, certificate: SenderCertificate) -> httpx.Client:
        """The HTTP/2 client for this certificate; a renewed one (another fingerprint) gets a new client."""
        with self._lock:
            if self._client is None or self._fingerprint != certificate.fingerprint:
                if self._client is not None:
                    self._client.close()
                context = self._tls_context(certificate)
                self._client = httpx.Client(http2=True, verify=context, timeout=REQUEST_TIMEOUT_SECONDS)
                self._fingerprint = certificate.fingerprint
            return self._client

    def _tls_context(self, certificate: SenderCertificate) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._ca_file)) if self._ca_file else httpx.create_ssl_context()
        context.set_alpn_protocols(["h2"])
        _load_client_certificate(context, certificate.certificate_pem, self._sealer.open(certificate.key_sealed))
        return context


def _load_client_certificate(context: ssl.SSLContext, certificate_pem: str, key_pem: str) -> None:
    """`ssl` reads a client key only from a file: it gets one, encrypted under a one-time password, for an instant."""
    password = secrets.token_urlsafe(32).encode()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with tempfile.TemporaryDirectory(prefix="mdm-apns-") as folder:  # 0700
        certificate_file, key_file = Path(folder, "push.pem"), Path(folder, "push.key")
        certificate_file.write_text(certificate_pem)
        key_file.write_bytes(encrypted)
        context.load_cert_chain(certificate_file, key_file, password=password)


def _reason(response: httpx.Response) -> str | None:
    try:
        reason = json.loads(response.content or b"{}").get("reason")
    except (ValueError, AttributeError):
        return None
    return str(reason)[:100] if reason else None


def _retry_after(response: httpx.Response, now: datetime) -> timedelta | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        return email.utils.parsedate_to_datetime(value) - now
    except (TypeError, ValueError):
        return None


def _wait_more(wait: _Wait, now: datetime, retry_after: timedelta | None) -> datetime:
    """Another failure: wait twice as long as last time, or as long as APNs asked (never past the cap)."""
    wait.failures += 1
    delay = retry_after if retry_after is not None else doubling(FIRST_WAIT, LONGEST_WAIT, wait.failures)
    wait.until = now + min(max(delay, timedelta(0)), LONGEST_WAIT)
    return wait.until
