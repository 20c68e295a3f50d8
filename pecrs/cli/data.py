"""pecrs data ...: inspect datasets."""
from __future__ import annotations

import json


def _data_stats(args) -> int:
    from ..loaders import load_dataset
    from ..stats import dataset_stats, format_stats

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
