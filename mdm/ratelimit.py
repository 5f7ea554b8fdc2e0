"""Abuse limits: failed sign-ins and enrolment attempts, counted per client address and per credential.

Only what an attacker must do many times is counted: refused credentials (bearer tokens, device
signatures, enrolment tokens) and enrolment attempts. Authenticated traffic spends nothing, so a
nightly MIS sync or 20,000 devices checking in never meet a limit; checking one costs a dict lookup.

Each limit is a token bucket (`count` events, refilled evenly over `per_seconds`): a burst of `count`
passes, then one more every `per_seconds / count`. Buckets live in this process, so each replica
counts on its own: behind N replicas an address gets up to N times the limit.

The client address is the socket peer as the ASGI server reports it; uvicorn replaces it with the
X-Forwarded-For address only for proxies in its --forwarded-allow-ips (MDM_FORWARDED_ALLOW_IPS).
"""

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from starlette.types import Scope

from mdm.errors import ProblemError
from mdm.settings import Settings

Clock = Callable[[], float]
# An attacker rotating addresses or made-up tokens must not grow the table without bound.
MAX_KEYS = 100_000
# An IPv6 host is usually handed a whole /64: counting single addresses would let it rotate freely.
IPV6_PREFIX = 64
# How long a credential that authenticated is let past its address's count, and how often that is noted.
KNOWN_GOOD_SECONDS = 24 * 3600
KNOWN_GOOD_REFRESH_SECONDS = 60
# What an enrolment refusal looks like when the token itself was refused (unknown, expired, revoked).
REFUSED_ENROLMENT_STATUSES = frozenset({401, 410})


@dataclass(frozen=True)
class Rate:
    count: int
    per_seconds: float

    @property
    def refill_per_second(self) -> float:
        return self.count / self.per_seconds


class TokenBuckets:
    """Buckets by key; `wait` asks how long until one event is allowed, `spend` records one."""

    def __init__(self, clock: Clock = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> (tokens left, when last updated, its rate); a key absent is a full bucket.
        self._buckets: dict[str, tuple[float, float, Rate]] = {}

    def wait(self, rate: Rate, key: str) -> int:
        """Whole seconds until this key may have one more event; 0 when it may now."""
        with self._lock:
            return _seconds_to_one(rate, self._level(rate, key, self._clock()))

    def spend(self, rate: Rate, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._store(rate, key, self._level(rate, key, now) - 1, now)

    def take(self, rate: Rate, key: str) -> int:
        """Spends one event if the key has one and answers 0; otherwise the seconds to wait."""
        with self._lock:
            now = self._clock()
            level = self._level(rate, key, now)
            if level < 1:
                return _seconds_to_one(rate, level)
            self._store(rate, key, level - 1, now)
            return 0

    def _level(self, rate: Rate, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(rate.count)
        tokens, updated, _rate = bucket
        # Rounded so a bucket refilled to exactly one event is not 0.9999999 of one.
        return min(float(rate.count), round(tokens + (now - updated) * rate.refill_per_second, 9))

    def _store(self, rate: Rate, key: str, tokens: float, now: float) -> None:
        # Popped and put back so the dict's order is least recently failed first: the order to forget in.
        if self._buckets.pop(key, None) is None and len(self._buckets) >= self._max_keys:
            self._make_room(now)
        self._buckets[key] = (max(tokens, 0.0), now, rate)

    def _make_room(self, now: float) -> None:
        # Buckets that have refilled carry no information; if that is not enough, forget the oldest.
        for key, (_tokens, _updated, rate) in list(self._buckets.items()):
            if self._level(rate, key, now) >= rate.count:
                del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]


def _seconds_to_one(rate: Rate, level: float) -> int:
    # Rounded to the millisecond first so float noise cannot turn an exact 1 s into 2 s.
    return 0 if level >= 1 else math.ceil(round((1 - level) / rate.refill_per_second, 3))


class AbuseLimits:
    """The service's limits, read from settings; one instance per app."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.enabled = settings.rate_limits == "on"
        self._clock = clock
        self._buckets = TokenBuckets(clock)
        # Credentials that authenticated lately (key -> when); only live tokens can get in here.
        self._good: dict[str, float] = {}
        self._good_lock = threading.Lock()
        auth_window = settings.auth_failure_window_seconds
        enrol_window = settings.enroll_window_seconds
        self.auth_per_address = Rate(settings.auth_failures_per_address, auth_window)
        self.auth_per_credential = Rate(settings.auth_failures_per_credential, auth_window)
        self.enrol_attempts = Rate(settings.enroll_attempts_per_address, enrol_window)
        self.enrol_failures_per_address = Rate(settings.enroll_failures_per_address, enrol_window)
        self.enrol_failures_per_token = Rate(settings.enroll_failures_per_token, enrol_window)

    # --- failed authentication (bearer tokens, device signatures) ---------------------------------

    def check_auth(self, address: str, channel: str, credential: str | None) -> None:
        """Raises 429 while this address (on this channel) or this credential has failed too often.

        A credential that authenticated lately skips its address's count: staff and the MIS sync
        behind a school's NAT keep working while someone else there hammers with made-up tokens.
        """
        if not self.enabled:
            return
        wait = 0
        if credential is not None:
            wait = self._buckets.wait(self.auth_per_credential, f"auth-credential:{credential}")
        if not wait and not self._known_good(credential):
            wait = self._buckets.wait(self.auth_per_address, f"auth-address:{channel}:{address}")
        if wait:
            raise too_many(wait, "Too many failed authentication attempts from this address or with this credential.")

    def auth_failed(self, address: str, channel: str, credential: str | None) -> None:
        if not self.enabled:
            return
        self._buckets.spend(self.auth_per_address, f"auth-address:{channel}:{address}")
        if credential is not None:
            self._buckets.spend(self.auth_per_credential, f"auth-credential:{credential}")

    def auth_succeeded(self, credential: str) -> None:
        if not self.enabled:
            return
        now = self._clock()
        with self._good_lock:
            if now - self._good.get(credential, -KNOWN_GOOD_SECONDS) < KNOWN_GOOD_REFRESH_SECONDS:
                return  # recorded a moment ago: no write on every request
            self._good.pop(credential, None)
            while len(self._good) >= MAX_KEYS:
                del self._good[next(iter(self._good))]
            self._good[credential] = now

    def _known_good(self, credential: str | None) -> bool:
        if credential is None:
            return False
        with self._good_lock:
            seen = self._good.get(credential)
        return seen is not None and self._clock() - seen < KNOWN_GOOD_SECONDS

    # --- enrolment ---------------------------------------------------------------------------------

    @contextmanager
    def enrolment(self, address: str, token_secret: str) -> Iterator[None]:
        """One enrolment attempt: refused with 429 when over a limit; a refused token counts against both."""
        if not self.enabled:
            yield
            return
        token_key = f"enrol-token:{_digest(token_secret)}"
        wait = max(
            self._buckets.wait(self.enrol_failures_per_address, f"enrol-failures:{address}"),
            self._buckets.wait(self.enrol_failures_per_token, token_key),
        )
        if wait:
            raise too_many(wait, "Too many refused enrolment attempts from this address or with this token.")
        wait = self._buckets.take(self.enrol_attempts, f"enrol-attempts:{address}")
        if wait:
            raise too_many(wait, "Too many enrolment attempts from this address.")
        try:
            yield
        except ProblemError as exc:
            if exc.status in REFUSED_ENROLMENT_STATUSES:
                self._buckets.spend(self.enrol_failures_per_address, f"enrol-failures:{address}")
                self._buckets.spend(self.enrol_failures_per_token, token_key)
            raise


def too_many(retry_after: int, reason: str) -> ProblemError:
    return ProblemError(
        429,
        f"{reason} Try again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
        retry_after=retry_after,
    )


def client_address(scope: Scope) -> str:
    """The key for the client's address: the address itself, or its /64 for IPv6."""
    client = scope.get("client")
    host = client[0] if client else "unknown"
    return _ipv6_key(host) if ":" in host else host


@lru_cache(maxsize=4096)
def _ipv6_key(host: str) -> str:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


def _digest(secret: str) -> str:
    # Keys hold a hash, never the secret itself.
    return hashlib.sha256(secret.encode()).hexdigest()
