"""The `pecrs` command line: one argparse subcommand per task, one module per group of commands.

    data.py        pecrs data stats
    train_eval.py  pecrs train, pecrs evaluate (both protocols), pecrs baseline
    compare.py     pecrs compare (two models' --predictions: differences, paired intervals)
    experiment.py  pecrs experiment
    serving.py     pecrs chat, pecrs serve, pecrs export
    common.py      argument types, the overrides-after-options parser, help text shared by groups

To add a subcommand, write `add_<name>_parser(subparsers)` in its group's module that registers its
arguments and sets `func=<handler>` (handler(args) -> exit status), then append it to SUBCOMMANDS.
Import heavy modules (torch, transformers) inside the handler so `pecrs --help` and `pecrs data`
stay fast. Bad input data raises `DataError`; main() prints its message (file, line, field) and
exits 2. `python -m pecrs.cli` (also `accelerate launch -m` and `torchrun -m`) runs main.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..data import DataError
from .compare import add_compare_parser
from .data import add_data_parser
from .experiment import add_experiment_parser
from .serving import add_chat_parser, add_export_parser, add_serve_parser
from .train_eval import add_baseline_parser, add_evaluate_parser, add_train_parser

SUBCOMMANDS = [add_data_parser, add_train_parser, add_evaluate_parser, add_experiment_parser,
               add_chat_parser, add_serve_parser, add_baseline_parser, add_export_parser, add_compare_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pecrs", description="PECRS: parameter-efficient conversational recommendation")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"pecrs {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"pecrs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C ends a chat or a long run: no traceback
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`pecrs data stats X | head`): not an
        # error. Point stdout at devnull so Python's exit-time flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:   # a folder under a file, a disk full, a permission: named, no traceback
        print(f"pecrs: error: {e}", file=sys.stderr)
        return 2
