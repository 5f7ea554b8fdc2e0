"""Every figure a benchmark prints, in one shape and beside its limit (issue 12), so a run reads as a checklist.

    figure: unchanged check-ins: 101/s                       limit: >= 1,000/s                  MISSED

A limit may be set for one size of fleet (compliance: 100,000 devices). A run at another size shows the
figure but does not judge it: fixed costs dominate small runs, so scaling the limit would mislead either
way. A figure with no limit (the bare endpoint, the statement counts) is the reference the others lean on.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    bound: float
    at_most: bool  # True: the figure may not exceed the bound; False: it must reach it
    strict: bool = False  # "under 500 ms" rather than "at most 500 ms"
    size: int | None = None  # the number of devices (or rows) the limit is set for; None: any size

    def holds(self, value: float) -> bool:
        if self.at_most:
            return value < self.bound if self.strict else value <= self.bound
        return value > self.bound if self.strict else value >= self.bound

    def text(self, unit: str) -> str:
        sign = ("<" if self.strict else "<=") if self.at_most else (">" if self.strict else ">=")
        return f"{sign} {number(self.bound)}{unit}" + (f" at {self.size:,}" if self.size else "")


def at_most(bound: float, *, size: int | None = None, strict: bool = False) -> Limit:
    return Limit(bound, at_most=True, strict=strict, size=size)


def at_least(bound: float, *, size: int | None = None) -> Limit:
    return Limit(bound, at_most=False, size=size)


def number(value: float) -> str:
    """Few digits, as many as the figure's size warrants: 1,412 / 48.2 / 0.93."""
    if value != value:  # NaN: nothing was measured
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def figure_line(name: str, value: float, unit: str, limit: Limit | None = None, *, size: int | None = None) -> str:
    """One figure beside its limit: met, MISSED, or not judged (no limit, or a run at another size)."""
    head = f"figure: {name}: {number(value)}{unit}"
    if limit is None:
        return f"{head:<72} limit: none (reference)"
    if limit.size is not None and size != limit.size:
        verdict = f"not judged (ran {size:,})" if size is not None else "not judged"
    else:
        verdict = "met" if value == value and limit.holds(value) else "MISSED"
    return f"{head:<72} limit: {limit.text(unit):<28} {verdict}"


def figure(name: str, value: float, unit: str, limit: Limit | None = None, *, size: int | None = None) -> None:
    print(figure_line(name, value, unit, limit, size=size), flush=True)
