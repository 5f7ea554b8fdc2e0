"""The benchmarks still run: tiny fleets, a second's load, no errors, every figure beside a limit.

Nothing here is timed or judged against a limit (the machine running CI says nothing about the
service's speed); a benchmark that errors or prints a figure without its limit would mislead whoever
takes the real figures, and that is what these catch.
"""

import re

from bench import checkin, storm

FIGURE = re.compile(r"^figure: (?P<name>.+?): \S+.*? limit: (?P<limit>.+)$")


def _figures(output: str) -> dict[str, str]:
    lines = [line for line in output.splitlines() if line.startswith("figure:")]
    figures = {match["name"]: match["limit"] for match in map(FIGURE.match, lines) if match}
    assert len(figures) == len(lines), f"a figure without its limit: {lines}"
    return figures


def test_the_morning_storm_checks_every_seeded_device_in_as_unchanged(capsys):
    storm.run(None, devices=5, window=2.0)
    output = capsys.readouterr().out
    figures = _figures(output)
    assert "storm, latency p99" in figures
    assert "< 500 ms" in figures["storm, latency p99"]
    assert re.search(r"figure: storm, errors: 0 .* met$", output, re.MULTILINE), output
    assert re.search(r"figure: storm, check-ins completed: 5 of 5 ", output), output
    assert "0 first check-in(s) changed a stored inventory" in output


def test_the_checkin_benchmark_measures_agents_and_idle_ipads_without_errors(capsys):
    checkin.run(None, seconds=0.3, threads=2)
    output = capsys.readouterr().out
    figures = _figures(output)
    assert {
        "unchanged check-ins",
        "changed check-ins",
        "changed check-ins, a family app drifted (no reconcile)",
        "enrolments",
        "Apple idle connects, share of /healthz",
        "server CPU per Apple idle connect",
    } <= set(figures)
    assert "<= 1 ms" in figures["server CPU per Apple idle connect"]
    assert re.search(r"figure: errors in every phase: 0 .* met$", output, re.MULTILINE), output
    cpu = re.search(r"figure: server CPU per unchanged check-in: (\S+) ms", output)
    assert cpu is not None, output
    assert float(cpu[1]) > 0, output
