"""Runs every benchmark in turn: `python -m bench [--database-url URL]`."""

import argparse

from bench import people_import


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="Default: a fresh SQLite file in a temporary folder.")
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    people_import.run(args.rows, args.database_url)


if __name__ == "__main__":
    main()
