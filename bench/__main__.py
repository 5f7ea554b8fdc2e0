"""Runs the benchmarks and prints each figure beside its limit: `python -m bench [--database-url URL]`.

Without --only, each benchmark runs in a process of its own, so each one's peak memory is its own.
Limits set for one size (compliance at 100,000 devices) are judged only at that size; the defaults
are those sizes. The storm's defaults are the issue's: 20,000 devices within 300 s.
"""

import argparse
import subprocess
import sys

from bench import checkin, compliance, leavers, people_import, reconcile, storm

BENCHMARKS = ["people", "leavers", "reconcile", "compliance", "checkin", "storm"]


def positive(kind: type[int] | type[float]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        help="A server's admin URL: a new database on it, dropped after. Default: a fresh SQLite file.",
    )
    parser.add_argument("--only", choices=BENCHMARKS, help="Run one benchmark.")
    parser.add_argument("--rows", type=positive(int), default=50_000, help="People in the import benchmark.")
    parser.add_argument("--leavers", type=positive(int), default=leavers.LEAVERS, help="Leavers imported at once.")
    parser.add_argument("--devices", type=positive(int), default=50_000, help="Devices in the reconciler benchmark.")
    parser.add_argument(
        "--compliance-devices", type=positive(int), default=100_000, help="Devices in the compliance benchmark."
    )
    parser.add_argument("--seconds", type=positive(float), default=10.0, help="How long each check-in phase runs.")
    parser.add_argument(
        "--storm-devices", type=positive(int), default=storm.DEVICES, help="Devices in the morning storm."
    )
    parser.add_argument(
        "--storm-window",
        type=positive(float),
        default=storm.WINDOW_SECONDS,
        help="Seconds the storm's arrivals spread over.",
    )
    parser.add_argument(
        "--workers",
        type=positive(int),
        default=1,
        help="Server processes for the check-in and storm benchmarks (MDM_WORKERS).",
    )
    return parser


def main() -> None:
    arguments = parser()
    args = arguments.parse_args()
    if args.workers > 1 and not (args.database_url or "").startswith("postgresql"):
        # As `mdm serve` itself refuses: SQLite takes one writer at a time however many processes wait.
        arguments.error("--workers above 1 needs PostgreSQL: give --database-url postgresql+psycopg://...")
    if args.only is None:
        failed = [
            name
            for name in BENCHMARKS
            if subprocess.run([sys.executable, "-m", "bench", *sys.argv[1:], "--only", name]).returncode
        ]
        if failed:
            sys.exit(f"benchmarks that failed: {', '.join(failed)}")
        return
    run = {
        "people": lambda: people_import.run(args.rows, args.database_url),
        "leavers": lambda: leavers.run(args.leavers, args.database_url),
        "reconcile": lambda: reconcile.run(args.devices, args.database_url),
        "compliance": lambda: compliance.run(args.compliance_devices, args.database_url),
        "checkin": lambda: checkin.run(args.database_url, args.seconds, args.workers),
        "storm": lambda: storm.run(args.database_url, args.storm_devices, args.storm_window, args.workers),
    }
    run[args.only]()


if __name__ == "__main__":
    main()
