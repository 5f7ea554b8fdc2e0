"""Comparing version strings the way people read them: 17.5 < 17.5.1 < 17.6 < 17.10 < 18.0.

Shared by the app catalogue (minimum app versions) and compliance (OS releases), so both order
versions alike.
"""

import re
from functools import lru_cache

VersionKey = tuple[tuple[int, str], ...]
_ZERO = (0, "")


@lru_cache(maxsize=65536)  # a fleet reports a few hundred distinct versions, judged millions of times a night
def version_key(version: str | None) -> VersionKey:
    """A sort key: numeric parts compare as numbers, and trailing zeros do not count ("18" == "18.0").

    A part that is not a number (a "beta", an "(a)") sorts below any number in the same place.
    """
    parts = re.split(r"[.\-+]", version or "")
    key = [(int(part), "") if part.isdigit() else (-1, part) for part in parts if part]
    while key and key[-1] == _ZERO:
        key.pop()
    return tuple(key)


@lru_cache(maxsize=65536)  # six million app checks a night over a few hundred (version, minimum) pairs
def meets_minimum(version: str | None, minimum: str | None) -> bool:
    return minimum is None or (version is not None and version_key(version) >= version_key(minimum))
