"""The `pecrs` command line: one argparse subcommand per task.

To add a subcommand, write `add_<name>_parser(subparsers)` that registers its arguments and
sets `func=<handler>` (handler(args) -> exit status), then append it to SUBCOMMANDS. Import heavy
modules (torch, transformers) inside the handler so `pecrs --help` and `pecrs data` stay fast.
Bad input data raises `DataError`; main() prints its message (file, line, field) and exits 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .data import DataError


# ---- pecrs data ... --------------------------------------------------------------------------

def _data_stats(args) -> int:
    from .loaders import load_dataset
    from .stats import dataset_stats, format_stats

    bundle = load_dataset(args.path, fmt=args.fmt, mentions=args.mentions)
    stats = dataset_stats(bundle)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def add_data_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    stats = data_sub.add_parser("stats", help="Table 1 statistics and instances per split",
                                description="Print dataset statistics (paper Table 1) per split.")
    stats.add_argument("path", help="dataset folder (JSON Lines, ReDial or INSPIRED TSV)")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument("--fmt", choices=("jsonl", "redial", "inspired-tsv"), default=None,
                       help="force the input format (default: detect from the folder)")
    stats.add_argument("--mentions", choices=("pecrs", "all"), default="pecrs",
                       help="ReDial only: link mentions as PECRS did (default) or link all")
    stats.set_defaults(func=_data_stats)


# ---- the parser ------------------------------------------------------------------------------

SUBCOMMANDS = [add_data_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pecrs", description="PECRS: parameter-efficient conversational recommendation")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except DataError as e:
        print(f"pecrs: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`pecrs data stats X | head`): not an
        # error. Point stdout at devnull so Python's exit-time flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
