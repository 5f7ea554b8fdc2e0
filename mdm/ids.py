"""Identifiers and clocks shared by every domain."""

import os
import threading
import time
import uuid
from datetime import UTC, datetime

_RANDOM_BITS = 74  # rand_a (12) and rand_b (62): everything after the 48-bit millisecond
_last_id_value = 0
_id_lock = threading.Lock()


def new_id() -> str:
    """A UUIDv7 string: globally unique and ordered by creation, so keyset pages come out in time order.

    Within one process the ids are strictly increasing even inside one millisecond (RFC 9562's
    monotonic random method): a page sorted by id shows two events of the same millisecond in the
    order they happened, not in the order of their random bits.
    """
    global _last_id_value
    millis = time.time_ns() // 1_000_000
    value = ((millis & ((1 << 48) - 1)) << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big") >> 6
    with _id_lock:
        if value <= _last_id_value:
            value = _last_id_value + 1
        _last_id_value = value
    return str(uuid.UUID(int=_as_uuid7(value)))


def _as_uuid7(value: int) -> int:
    """Spreads 122 bits (millisecond, then randomness) around UUIDv7's version and variant fields."""
    millis = value >> _RANDOM_BITS
    rand_a = (value >> 62) & 0xFFF
    rand_b = value & ((1 << 62) - 1)
    return (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0x2 << 62) | rand_b


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True
