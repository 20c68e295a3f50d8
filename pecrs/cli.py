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
from pathlib import Path

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


# ---- pecrs train / evaluate ------------------------------------------------------------------

def _train(args) -> int:
    from .config import RunConfig
    from .train import train

    config = RunConfig.load(args.config, args.overrides)
    output = args.output_dir or f"runs/{Path(args.config).stem}"
    state = train(config, output, progress=not args.quiet)
    print(json.dumps({"output_dir": output, **{k: state[k] for k in ("epoch", "global_step", "best", "best_epoch")}}))
    return 0


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train PECRS from a config",
                              description="Train PECRS (one stage, §3.6). Rerun to resume from RUN/last.")
    p.add_argument("config", help="YAML config, e.g. configs/inspired.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    p.add_argument("--output-dir", help="run folder (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)


def checkpoint_dir(path: str) -> Path:
    """A run folder means its best/ checkpoint; a checkpoint folder is used as is."""
    path = Path(path)
    if (path / "best" / "pecrs_config.json").is_file():
        return path / "best"
    if (path / "pecrs_config.json").is_file():
        return path
    raise FileNotFoundError(f"{path} is neither a run folder with best/ nor a pecrs checkpoint")


def _evaluate(args) -> int:
    from .evaluate import evaluate
    from .pretrained import load_pretrained
    from .train import prepare

    ckpt = checkpoint_dir(args.run_dir)
    model, config = load_pretrained(ckpt, backbone=args.backbone)
    if args.item_fields:
        config.model.item_fields = args.item_fields.split(",")
    setup = prepare(config, model=model, dataset=args.dataset)
    if args.split not in setup.samples:
        raise SystemExit(f"pecrs: error: split '{args.split}' not found; have {sorted(setup.samples)}")
    samples = setup.samples[args.split][: args.max_samples] if args.max_samples else setup.samples[args.split]
    result = evaluate(setup.model, setup.store, setup.encoder, samples,
                      m_inference=args.m_inference or config.train.m_inference,
                      batch_size=args.batch_size or config.train.eval_batch_size,
                      generate=not args.no_generate, strategy=args.decoding, seed=config.train.seed,
                      progress=not args.json)
    result = {"checkpoint": str(ckpt), "split": args.split, "decoding": args.decoding, **result}
    out = Path(args.output) if args.output else ckpt.parent / f"eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    else:
        for key, value in result.items():
            if key != "examples":
                print(f"{key:>24}: {value}")
    return 0


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained run",
                              description="Recommendation and conversation metrics (§4.1) on one split.")
    p.add_argument("run_dir", help="run folder (uses its best/ checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--decoding", default="top_k", help="decoding strategy (pecrs.decoding.PRESETS)")
    p.add_argument("--m-inference", type=int, help="candidates retrieved then re-ranked")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-samples", type=int, help="evaluate the first N samples only")
    p.add_argument("--no-generate", action="store_true", help="recommendation metrics and perplexity only")
    p.add_argument("--dataset", help="dataset folder (default: the one the run trained on)")
    p.add_argument("--item-fields", help="comma-separated item fields, e.g. title,genres (Table 6)")
    p.add_argument("--backbone", help="where the base LM comes from, if not the recorded one")
    p.add_argument("--output", help="write the JSON here (default RUN/eval_<split>.json)")
    p.set_defaults(func=_evaluate)


# ---- the parser ------------------------------------------------------------------------------

SUBCOMMANDS = [add_data_parser, add_train_parser, add_evaluate_parser]


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
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"pecrs: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`pecrs data stats X | head`): not an
        # error. Point stdout at devnull so Python's exit-time flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
