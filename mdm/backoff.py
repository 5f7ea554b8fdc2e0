"""Exponential back-off, shared by every retry the service makes (busy devices, struggling receivers)."""

from datetime import timedelta


def doubling(first: timedelta, longest: timedelta, attempt: int) -> timedelta:
    """first, 2 x first, 4 x first ... for attempts 1, 2, 3 ..., never more than `longest`."""
    return min(first * (2 ** max(attempt - 1, 0)), longest)
