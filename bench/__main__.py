"""Runs every benchmark in turn: `python -m bench [--database-url URL]`."""

import argparse

from bench import checkin, compliance, people_import, reconcile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="Default: a fresh SQLite file in a temporary folder.")
    parser.add_argument("--rows", type=int, default=50_000, help="People in the import benchmark.")
    parser.add_argument("--devices", type=int, default=50_000, help="Devices in the reconciler benchmark.")
    parser.add_argument("--compliance-devices", type=int, default=100_000, help="Devices in the compliance benchmark.")
    parser.add_argument("--seconds", type=float, default=10.0, help="How long each check-in phase runs.")
    parser.add_argument("--only", choices=["people", "reconcile", "compliance", "checkin"], help="Run one benchmark.")
    args = parser.parse_args()
    if args.only in (None, "people"):
        people_import.run(args.rows, args.database_url)
    if args.only in (None, "reconcile"):
        reconcile.run(args.devices, args.database_url)
    if args.only in (None, "compliance"):
        compliance.run(args.compliance_devices, args.database_url)
    if args.only in (None, "checkin"):
        checkin.run(args.database_url, args.seconds)


if __name__ == "__main__":
    main()
