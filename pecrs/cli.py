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

    config = RunConfig.load(args.config, args.overrides)   # checked before torch is even imported
    from .train import train

    output = args.output_dir or f"runs/{Path(args.config).stem}"
    state = train(config, output, progress=not args.quiet)
    print(json.dumps({"output_dir": output, **{k: state[k] for k in ("epoch", "global_step", "best", "best_epoch")}}))
    return 0


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train PECRS from a config",
                              description="Train PECRS (one stage, §3.6). Rerun to resume from RUN/last.")
    p.__class__ = _IntermixedParser
    p.add_argument("config", help="YAML config, e.g. configs/inspired.yaml")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    p.add_argument("--output-dir", help="run folder (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)


def _evaluate(args) -> int:
    if args.protocol == "standardized":
        return _evaluate_standardized(args)
    from .evaluate import evaluate
    from .pretrained import checkpoint_dir, load_pretrained
    from .setup import prepare

    ckpt = checkpoint_dir(args.run_dir)
    model, config = load_pretrained(ckpt, backbone=args.backbone)
    inference = _inference_settings(config, args)
    from .backbone import default_device

    dtype = _apply_dtype(model, inference.dtype, default_device(args.device))
    setup = prepare(config, model=model, dataset=args.dataset, device=default_device(args.device))
    if args.split not in setup.samples:
        raise SystemExit(f"pecrs: error: split '{args.split}' not found; have {sorted(setup.samples)}")
    samples = setup.samples[args.split][: args.max_samples] if args.max_samples else setup.samples[args.split]
    result = evaluate(setup.model, setup.store, setup.encoder, samples, inference, generate=not args.no_generate,
                      max_new_tokens=config.model.response_max_tokens, seed=config.train.seed,
                      progress=not args.json)
    result = {"checkpoint": str(ckpt), "split": args.split, "decoding": inference.decoding,
              "m_inference": inference.m_inference, "dtype": dtype, **result}
    out = Path(args.output) if args.output else _result_path(ckpt, f"eval_{args.split}.json")
    out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    else:
        for key, value in result.items():
            if key != "examples":
                print(f"{key:>24}: {value}")
    return 0


def _inference_settings(config, args):
    """The run's inference section (config.inference) with this command's flags applied: --m-inference,
    --batch-size, --decoding, --dtype (unset: the run's value); --item-fields sets model.item_fields.
    Checked as a config is, so a bad decoding name fails before anything loads."""
    inference = config.inference
    for flag in ("m_inference", "batch_size", "decoding", "dtype"):
        if getattr(args, flag, None) is not None:
            setattr(inference, flag, getattr(args, flag))
    if getattr(args, "item_fields", None):
        config.model.item_fields = args.item_fields.split(",")
    config.validate()
    return inference


def _apply_dtype(model, dtype: str, device) -> str:
    """`--dtype` for a model that `pecrs evaluate` loaded (pecrs.precision; logged once); returns
    the dtype chosen, which the result JSON records."""
    from .precision import resolve_dtype, to_inference_dtype

    choice = resolve_dtype(dtype, device)
    to_inference_dtype(model.eval(), choice.dtype)
    return choice.name


_DTYPE_HELP = ("precision of the LM: auto (default: bfloat16 on a GPU that supports it or a CPU with AMX / "
               "AVX512-BF16, else float32), float32, bfloat16 (pecrs.precision; docs/performance.md)")


def _result_path(ckpt: Path, filename: str) -> Path:
    """Where an evaluation of `ckpt` is written: its run folder, or for a model shipped inside the
    package (never written into) the working directory, as eval_<model>_<...>.json."""
    from .pretrained import is_shipped

    return Path.cwd() / f"eval_{ckpt.name}_{filename[5:]}" if is_shipped(ckpt) else ckpt.parent / filename


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _item_fields(text: str) -> str:
    """A comma-separated list of item fields, checked as the config checks model.item_fields."""
    from .config import ConfigError, check_value

    try:
        check_value("model.item_fields", text.split(","), list[str])
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained run",
                              description="Recommendation and conversation metrics (§4.1) on one split.")
    p.add_argument("run_dir", help="run folder (uses its best/ checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--decoding", help="decoding strategy (pecrs.decoding.PRESETS; default: the run's "
                                      "inference.decoding, top_k unless set)")
    p.add_argument("--m-inference", type=_positive_int,
                   help="candidates retrieved then re-ranked (default: the run's inference.m_inference)")
    p.add_argument("--batch-size", type=_positive_int, help="default: the run's inference.batch_size")
    p.add_argument("--max-samples", type=_positive_int, help="evaluate the first N samples only")
    p.add_argument("--no-generate", action="store_true", help="recommendation metrics and perplexity only")
    p.add_argument("--dataset", help="dataset folder (default: the one the run trained on)")
    p.add_argument("--item-fields", type=_item_fields,
                   help="comma-separated item fields, e.g. title,genres (Table 6)")
    p.add_argument("--backbone", help="where the base LM comes from, if not the recorded one")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), help=_DTYPE_HELP)
    p.add_argument("--output", help="write the JSON here (default RUN/eval_<split>.json)")
    p.add_argument("--protocol", choices=("pecrs", "standardized"), default="pecrs",
                   help="pecrs: the paper's samples of --split (default); standardized: the standardized "
                        "ReDial collection (Kostric & Balog, SIGIR '26) of the official test file in --dataset "
                        "(default: the run's dataset), recommendation only; see pecrs.standardized")
    p.set_defaults(func=_evaluate)


# ---- pecrs evaluate --protocol standardized / pecrs baseline naive -----------------------------

def _print_standardized(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    keys = list(result["full"])
    print(f"{'':>24}  {'full':>10}  {'dedup':>10}")
    for key in keys:
        cells = [result[v][key] for v in ("full", "dedup")]
        print(f"{key:>24}  " + "  ".join(f"{c:>10.4f}" if isinstance(c, float) else f"{c!s:>10}" for c in cells))


def _evaluate_standardized(args) -> int:
    from .backbone import default_device
    from .pretrained import checkpoint_dir, load_pretrained
    from .standardized import evaluate_model, load_collection, restrict
    from .setup import prepare

    ckpt = checkpoint_dir(args.run_dir)
    model, config = load_pretrained(ckpt, backbone=args.backbone)
    inference = _inference_settings(config, args)
    dataset = args.dataset or config.train.dataset
    collection = restrict(load_collection(dataset), args.max_samples)
    dtype = _apply_dtype(model, inference.dtype, default_device(args.device))
    setup = prepare(config, model=model, dataset=dataset, device=default_device(args.device))
    result = evaluate_model(setup.model, setup.store, setup.encoder, collection,
                            m_inference=inference.m_inference, batch_size=inference.batch_size,
                            progress=not args.json, log=lambda msg: print(msg, file=sys.stderr))
    out = Path(args.output) if args.output else _result_path(ckpt, "eval_standardized.json")
    out.write_text(json.dumps({"checkpoint": str(ckpt), "protocol": "standardized", "collection": collection.path,
                               "dtype": dtype, **result}, indent=2))
    _print_standardized(result, args.json)
    return 0


def _baseline(args) -> int:
    from .standardized import catalog_ids, evaluate_naive, load_collection

    collection = load_collection(args.dataset_dir)
    _print_standardized(evaluate_naive(collection, catalog_ids(args.dataset_dir)), args.json)
    return 0


def add_baseline_parser(subparsers) -> None:
    p = subparsers.add_parser("baseline", help="score a baseline that needs no model")
    sub = p.add_subparsers(dest="baseline", required=True, metavar="NAME")
    naive = sub.add_parser(
        "naive", help="recommend the movies mentioned earlier, most recent first",
        description="The naive baseline of the standardized ReDial evaluation (Kostric & Balog, SIGIR '26) on "
                    "the official test file: R@1/10/50, SR and RDL on the full and de-duplicated collections.")
    naive.add_argument("dataset_dir", help="ReDial folder with [official/]test_data.jsonl (or that file); its "
                                           "items.jsonl or movies_with_mentions.csv gives the missing-from-catalog count")
    naive.add_argument("--protocol", choices=("standardized",), default="standardized",
                       help="evaluation protocol (default and only one: standardized)")
    naive.add_argument("--json", action="store_true", help="print one JSON object {\"full\": ..., \"dedup\": ...}")
    naive.set_defaults(func=_baseline)


# ---- pecrs experiment ... ----------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _experiment(args) -> int:
    from .experiments import run_experiment

    parts = [p for chunk in (args.parts or []) for p in chunk.split(",") if p.strip()] or None
    result = run_experiment(
        args.name, config=args.config, output_dir=args.output_dir, overrides=args.overrides, parts=parts,
        redial_config=args.redial_config, accept_partial=args.accept_partial, merge_files=args.merge or (),
        list_only=args.list, options={"m_train": args.m_train, "m_inference": args.m_inference,
                                      "models": args.models.split(",") if args.models else None},
        progress=not args.quiet, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    # (the command recorded in result.json is rebuilt from these arguments)
    folder = Path(args.output_dir) / result["experiment"]
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


class _IntermixedParser(argparse.ArgumentParser):
    """Lets `section.key=value` overrides follow the options (`pecrs train C --output-dir D x.y=1`,
    `pecrs experiment NAME --config C x.y=1`). Every subcommand that takes overrides uses it."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_experiment_parser(subparsers) -> None:
    from .experiments import NAMES

    p = subparsers.add_parser(
        "experiment", help="rerun a table or figure of the paper",
        description="Rerun one of the paper's tables/figures in resumable parts (one training run or one "
                    "evaluation each); parts whose result exists are skipped. Writes DIR/NAME/result.json, "
                    "DIR/NAME/table.md and, for figures, a PNG. See docs/results.md.")
    p.__class__ = _IntermixedParser
    p.add_argument("name", choices=NAMES, metavar="NAME", help="one of: " + ", ".join(NAMES))
    p.add_argument("overrides", nargs="*",
                   help="section.key=value for every dataset, or inspired:section.key=value / redial:... for one")
    p.add_argument("--config", default="configs/inspired.yaml", help="YAML config (default configs/inspired.yaml)")
    p.add_argument("--redial-config", help="ReDial-subset config of main/table9_10 (default configs/redial.yaml "
                                           "beside an inspired.yaml, else --config with the dataset swapped)")
    p.add_argument("--output-dir", default="runs/experiments", help="where DIR/NAME/ and DIR/runs/ go")
    p.add_argument("--parts", action="append", help="comma-separated part names or glob patterns (default all)")
    p.add_argument("--list", action="store_true", help="run nothing; list parts and rewrite result.json/table.md")
    p.add_argument("--accept-partial", action="store_true",
                   help="evaluate models whose training stopped at max_train_minutes (marked as such)")
    p.add_argument("--merge", action="append", help="a result.json measured elsewhere: restore its parts here")
    p.add_argument("--m-train", type=_int_list, help="fig3: M_train values, e.g. 50,100,150,200")
    p.add_argument("--m-inference", type=_int_list, help="fig3: M_inference values, e.g. 100,300,700")
    p.add_argument("--models", help="table7: comma-separated backbones (default smollm2-135m-instruct,gemma-3-270m)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_experiment)


# ---- pecrs chat / serve ------------------------------------------------------------------------

def _load_recommender(args):
    import torch

    from .recommender import Recommender

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"pecrs: loading {args.run_dir}", file=sys.stderr, flush=True)
    rec = Recommender.from_pretrained(args.run_dir, catalog=args.catalog, device=args.device,
                                      m_inference=args.m_inference, decoding=args.decoding,
                                      strict_catalog=False, dtype=args.dtype, progress=True)
    print(rec.report.summary(), file=sys.stderr)
    for message in rec.report.errors:
        print(f"  skipped: {message}", file=sys.stderr)
    if rec.report.n_errors > len(rec.report.errors):
        print(f"  ... and {rec.report.n_errors - len(rec.report.errors)} more", file=sys.stderr)
    return rec


def _add_recommender_args(p) -> None:
    p.add_argument("run_dir", nargs="?", default="inspired",
                   help="run folder (uses its best/ checkpoint), checkpoint folder, or the name of a model "
                        "shipped with pecrs (default: inspired)")
    p.add_argument("--catalog", help="items.jsonl to recommend from (default: the run's catalog); "
                                     "bad lines are skipped and reported")
    p.add_argument("--decoding", help="decoding strategy (pecrs.decoding.PRESETS; default: the model's "
                                      "inference.decoding, top_k unless set)")
    p.add_argument("--m-inference", type=_positive_int,
                   help="candidates retrieved then re-ranked (default: the model's inference.m_inference)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), help=_DTYPE_HELP)


def _chat(args) -> int:
    from .chat import chat

    return chat(_load_recommender(args), k_items=args.k_items, seed=args.seed)


def add_chat_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="talk to a trained model in the terminal",
                              description="You are the seeker, the model the recommender. Commands: "
                                          "/top N, /reset, /quit. Reads stdin line by line.")
    _add_recommender_args(p)
    p.add_argument("--k-items", type=int, default=1, help="items injected per reply (default 1, as in the paper)")
    p.add_argument("--seed", type=int, help="make sampled replies reproducible")
    p.set_defaults(func=_chat)


def _serve(args) -> int:
    from .serve import serve

    rec = _load_recommender(args)
    print(f"serving on http://{args.host}:{args.port}/ (API: /recommend, /respond, /items/ID, /health)",
          file=sys.stderr)
    serve(rec, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP API and chat page for a trained model",
                              description="FastAPI server: POST /recommend, POST /respond, GET /items/ID, "
                                          "GET /health, and a chat page at /.")
    _add_recommender_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_serve)


# ---- pecrs export -----------------------------------------------------------------------------

def _export(args) -> int:
    from .export import export

    dest = export(args.run_dir, args.destination, catalog=args.catalog, device=args.device)
    sizes = {p.relative_to(dest).as_posix(): p.stat().st_size for p in dest.rglob("*") if p.is_file()}
    print(json.dumps({"exported": str(dest), "bytes": sum(sizes.values()), "files": sizes}))
    return 0


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained run as a model to ship",
                              description="float16 adapter and heads, the catalog and its item vectors, and a "
                                          "MODEL_CARD.md (pecrs.export). Copied to pecrs/models/NAME it loads "
                                          "as Recommender.from_pretrained('NAME').")
    p.add_argument("run_dir", help="run folder (uses its best/ checkpoint) or a checkpoint folder")
    p.add_argument("destination", help="folder to write (replaced if it exists)")
    p.add_argument("--catalog", help="items.jsonl to ship (default: the run's catalog)")
    p.add_argument("--device", help="where to encode the catalog (default: cuda when available)")
    p.set_defaults(func=_export)


# ---- the parser ------------------------------------------------------------------------------

SUBCOMMANDS = [add_data_parser, add_train_parser, add_evaluate_parser, add_experiment_parser,
               add_chat_parser, add_serve_parser, add_baseline_parser, add_export_parser]


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
