"""pecrs experiment NAME: rerun a table or figure of the paper (pecrs.experiments)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import IntermixedParser


def _int_list(text: str) -> list[int]:
    """--m-train / --m-inference: distinct integers >= 1, in the order given."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers >= 1, got '{text}'")
    return values


def _experiment(args) -> int:
    from ..experiments import run_experiment

    parts = [p for chunk in (args.parts or []) for p in chunk.split(",") if p.strip()] or None
    result = run_experiment(
        args.name, config=args.config, output_dir=args.output_dir, overrides=args.overrides, parts=parts,
        redial_config=args.redial_config, accept_partial=args.accept_partial, merge_files=args.merge or (),
        list_only=args.list, options={"m_train": args.m_train, "m_inference": args.m_inference,
                                      "models": args.models.split(",") if args.models else None},
        progress=not args.quiet, log=lambda msg: print(msg, file=sys.stderr, flush=True), model=args.model)
    # (the command recorded in result.json is rebuilt from these arguments)
    folder = Path(result["folder"])
    if args.json:
        print(json.dumps({"folder": str(folder), "summary": result["summary"], "errors": result["errors"],
                          "parts": {k: v["status"] for k, v in result["parts"].items()}}))
    else:
        width = max(len(k) for k in result["parts"])
        for name, entry in result["parts"].items():
            reason = f"  ({entry['reason']})" if entry.get("reason") else ""
            print(f"{name:>{width}}: {entry['status']}{reason}")
        print(f"\n{folder / 'table.md'}:\n")
        print((folder / "table.md").read_text())
    return 1 if result["errors"] else 0


def add_experiment_parser(subparsers) -> None:
    from ..experiments import NAMES

    p = subparsers.add_parser(
        "experiment", help="rerun a table or figure of the paper",
        description="Rerun one of the paper's tables/figures in resumable parts (one training run or one "
                    "evaluation each); parts whose result exists are skipped. Writes DIR/NAME/result.json, "
                    "DIR/NAME/table.md and, for figures, a PNG. See docs/results.md.")
    p.__class__ = IntermixedParser
    p.add_argument("name", choices=NAMES, metavar="NAME", help="one of: " + ", ".join(NAMES))
    p.add_argument("overrides", nargs="*",
                   help="section.key=value for every dataset, or inspired:section.key=value / redial:... for one")
    p.add_argument("--config", help="YAML config (default configs/inspired.yaml)")
    p.add_argument("--model", help="a trained model to evaluate instead of training one: a run folder, a checkpoint "
                                   "folder or a shipped model's name (inspired); its own config and dataset replace "
                                   "--config, and it stands for the run with its settings (table5's ablations and "
                                   "fig3's other M_train still train); overrides may change only what evaluation reads")
    p.add_argument("--redial-config", help="ReDial-subset config of main/table9_10 (default configs/redial.yaml "
                                           "beside an inspired.yaml, else --config with the dataset swapped)")
    p.add_argument("--output-dir", help="where DIR/NAME/ and DIR/runs/ go (default runs/experiments; with --model "
                                        "runs/experiments-MODEL)")
    p.add_argument("--parts", action="append", help="comma-separated part names or glob patterns (default all)")
    p.add_argument("--list", action="store_true", help="run nothing; list parts and rewrite result.json/table.md")
    p.add_argument("--accept-partial", action="store_true",
                   help="evaluate models whose training has not finished (stopped at max_train_minutes; "
                        "with --model, a run folder still training), marked as such")
    p.add_argument("--merge", action="append", help="a result.json measured elsewhere: restore its parts here")
    p.add_argument("--m-train", type=_int_list, help="fig3: M_train values, e.g. 50,100,150,200")
    p.add_argument("--m-inference", type=_int_list, help="fig3: M_inference values, e.g. 100,300,700")
    p.add_argument("--models", help="table7: comma-separated backbones (default smollm2-135m-instruct,gemma-3-270m)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_experiment)
