"""``python -m dbt_cloud_gate COMMAND``: ``doctor`` checks a setup end to end (see :mod:`dbt_cloud_gate.doctor`)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; its exit code (2 for bad arguments, as argparse exits)."""
    parser = argparse.ArgumentParser(prog="python -m dbt_cloud_gate")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from dbt_cloud_gate.doctor import cli as doctor

    doctor.add_arguments(commands.add_parser("doctor", help="check a setup end to end", description=doctor.DESCRIPTION))
    args = parser.parse_args(argv)
    return doctor.run(args)


if __name__ == "__main__":
    sys.exit(main())
