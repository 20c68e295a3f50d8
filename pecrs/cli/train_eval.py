"""pecrs train, pecrs evaluate (the paper's protocol and the standardized ReDial one) and
pecrs baseline: the commands that train a run or score one."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .results import (_measured_dataset, _measured_on, _output_path, _result_name, _result_path,
                      _say_where, _variant)
from .common import (DTYPE_HELP, EXCLUDE_HELP, NO_REPEAT_HELP, IntermixedParser, decoding_name, device_name,
                     item_fields, non_negative_int, positive_int)


# ---- pecrs train / evaluate ------------------------------------------------------------------

def _train(args) -> int:
    from ..config import RunConfig

    config = RunConfig.load(args.config, args.overrides)   # checked before torch is even imported
    from ..train import train

    output = args.output_dir or f"runs/{Path(args.config).stem}"
    from ..pretrained import CONFIG_FILE

    # A run inside a saved model (RUN/best, an export) would then load as that model (checkpoint_dir).
    for folder in (Path(output), *Path(output).resolve().parents):
        if folder.is_file():   # said now, not after minutes of loading
            raise ValueError(f"--output-dir {output}: {folder} is a file, not a folder")
        if (folder / CONFIG_FILE).is_file():
            raise ValueError(f"--output-dir {output}: {folder} is a saved model ({CONFIG_FILE}), not a run "
                             f"folder; choose another folder")
    state = train(config, output, progress=not args.quiet)
    print(json.dumps({"output_dir": output, **{k: state[k] for k in ("epoch", "global_step", "best", "best_epoch")}}))
    return 0


def add_train_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train PECRS from a config",
                              description="Train PECRS (one stage, §3.6). Rerun to resume from RUN/last.")
    p.__class__ = IntermixedParser
    p.add_argument("config", help="YAML config file, e.g. configs/inspired.yaml, or the name of one that ships "
                                  "with pecrs (inspired, redial, tiny, inspired-gpu, ...)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=2")
    p.add_argument("--output-dir", help="run folder (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)


def _evaluate(args) -> int:
    if args.inject != "every-turn" and (args.no_generate or args.protocol == "standardized"):
        raise ValueError("--inject chooses the replies an item is injected into; "
                         + ("--no-generate" if args.no_generate else "--protocol standardized") + " generates none")
    if args.protocol == "standardized":
        if args.predictions:
            raise ValueError("--predictions writes the pecrs protocol's samples; --protocol standardized has none")
        return _evaluate_standardized(args)
    from ..evaluate import evaluate, training_replies
    from ..export import checkpoint_position
    from ..pretrained import checkpoint_dir, load_pretrained, read_meta
    from ..prepare import prepare

    ckpt = checkpoint_dir(args.run_dir)
    # Checked before minutes of work: the dataset, then where the results go.
    meta = read_meta(ckpt)
    dataset, own = _measured_dataset(args.dataset, ckpt, meta)
    variant = _variant(args, dataset, own, meta)
    out = _output_path(args.output, ckpt, _result_name(args.split, variant), dataset=dataset)
    predictions_out = (_output_path(args.predictions, ckpt, "", "--predictions", dataset=dataset)
                       if args.predictions else None)
    if predictions_out is not None and predictions_out.resolve() == out.resolve():
        raise ValueError(f"--predictions {predictions_out} is where the result JSON goes (--output): give another file")
    _say_where(args.output, out, variant, _result_path(ckpt, f"eval_{args.split}.json").name)
    model, config = load_pretrained(ckpt, backbone=args.backbone)
    inference = _inference_settings(config, args)
    from ..backbone import default_device

    dtype = _apply_dtype(model, inference.dtype, default_device(args.device))
    setup = prepare(config, model=model, dataset=str(dataset), device=default_device(args.device),
                    saved_vectors_from=None if getattr(args, "item_fields", None) else ckpt)
    if args.split not in setup.samples:
        raise ValueError(f"--split {args.split}: {dataset} has no such split; it has {', '.join(sorted(setup.samples))}")
    samples = setup.samples[args.split][: args.max_samples] if args.max_samples else setup.samples[args.split]
    from ..experiments.provenance import git_revision, hardware, now

    revision = git_revision()   # the code that runs: read before an evaluation of hours, not after
    # The constant-reply baseline is chosen among the dataset's training replies, when it has them.
    train_split = config.train.train_split
    inject = args.inject.replace("-", "_")   # the flag's spelling, evaluate()'s INJECT_PROTOCOLS
    train_replies = (training_replies(setup.bundle, train_split)
                     if not args.no_generate and train_split in setup.bundle.splits else None)
    result = evaluate(setup.model, setup.store, setup.encoder, samples, inference, generate=not args.no_generate,
                      perplexity=not args.no_ppl,
                      max_new_tokens=config.model.response_max_tokens, seed=config.train.seed,
                      progress=not args.json, predictions=predictions_out is not None, train_replies=train_replies,
                      inject=inject)
    if predictions_out is not None:
        predictions_out.write_text("".join(json.dumps(r) + "\n" for r in result.pop("predictions")),
                                   encoding="utf-8")
    result = {"checkpoint": str(ckpt), **checkpoint_position(meta), "split": args.split,
              **_measured_on(dataset, args, config.train),
              "decoding": inference.decoding, "no_repeat_ngram": inference.no_repeat_ngram,
              "m_inference": inference.m_inference, "exclude_mentioned": inference.exclude_mentioned,
              "dtype": dtype, **({"inject": inject} if not args.no_generate else {}), **result,
              "measured": {"date": now(), "git_revision": revision, "hardware": hardware()}}
    out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    else:
        # The per-genre table (Tables 9-10) stays in the file; its three rates are printed.
        genres = result.get("genres") or {}
        shown = {**{k: v for k, v in result.items() if k not in ("examples", "genres", "measured")},
                 **{f"genre_{k}": genres.get(k) for k in ("accuracy", "wrong_genre_rate", "random_genre_rate")}}
        width = max(map(len, shown))
        for key, value in shown.items():
            print(f"{key:>{width}}: {value}")
    return 0


def _inference_settings(config, args):
    """The run's inference section (config.inference) with this command's flags applied: --m-inference,
    --batch-size, --decoding, --no-repeat-ngram, --dtype, --exclude-mentioned (unset: the run's value);
    --item-fields sets model.item_fields.
    Checked as a config is, so a bad decoding name fails before anything loads."""
    inference = config.inference
    for flag in ("m_inference", "batch_size", "decoding", "no_repeat_ngram", "dtype", "exclude_mentioned"):
        if getattr(args, flag, None) is not None:
            setattr(inference, flag, getattr(args, flag))
    if getattr(args, "item_fields", None):
        config.model.item_fields = args.item_fields.split(",")
    config.validate()
    return inference


def _apply_dtype(model, dtype: str, device) -> str:
    """`--dtype` for a model that `pecrs evaluate` loaded (pecrs.precision; logged once); returns
    the dtype chosen, which the result JSON records."""
    from ..precision import resolve_dtype, to_inference_dtype

    choice = resolve_dtype(dtype, device)
    to_inference_dtype(model.eval(), choice.dtype)
    return choice.name


def add_evaluate_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained run",
                              description="Recommendation and conversation metrics (§4.1) on one split.")
    p.add_argument("run_dir", help="run folder (uses its best/ checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--decoding", type=decoding_name, help="decoding strategy (pecrs.decoding.PRESETS; default: the run's "
                                      "inference.decoding, top_k unless set)")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, metavar="N", help=NO_REPEAT_HELP)
    p.add_argument("--m-inference", type=positive_int,
                   help="candidates retrieved then re-ranked (default: the run's inference.m_inference)")
    p.add_argument("--batch-size", type=positive_int, help="default: the run's inference.batch_size")
    p.add_argument("--max-samples", type=positive_int, help="evaluate the first N samples only")
    p.add_argument("--no-generate", action="store_true", help="recommendation metrics and perplexity only")
    p.add_argument("--no-ppl", action="store_true", help="no perplexity (with --no-generate: recall only, "
                                                        "the fastest check of a model)")
    p.add_argument("--dataset", help="dataset folder (default: the one the run trained on, looked for from the "
                                     "working directory, then above the run)")
    p.add_argument("--item-fields", type=item_fields,
                   help="comma-separated item fields, e.g. title,genres (Table 6)")
    p.add_argument("--backbone", help="where the base LM comes from, if not the recorded one")
    p.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), help=DTYPE_HELP)
    p.add_argument("--exclude-mentioned", action=argparse.BooleanOptionalAction, help=EXCLUDE_HELP)
    p.add_argument("--output", help="write the JSON here (default: RUN/eval_<split>.json for a run folder, "
                                        "CKPT/eval_<split>.json for a checkpoint folder, "
                                        "./eval_<model>_<split>.json for a shipped model; on another --dataset, "
                                        "with --max-samples N, other --item-fields, inference settings or --no-generate/--no-ppl: "
                                        "eval_<dataset>_<split>_first<N>_<fields>_<...>.json, so that eval_<split>.json, which "
                                        "`pecrs export` quotes, stays the run's own full figures)")
    p.add_argument("--inject", choices=("every-turn", "target-turns"), default="every-turn",
                   help="which replies get the top-1 item injected: every-turn (default; §3.6, as served: the "
                        "model decides whether to name it) or target-turns (only where the reference recommends, "
                        "as the authors' code measured the paper's F-1 and ROUGE; the gold answer leaks)")
    p.add_argument("--predictions", metavar="FILE",
                   help="also write one JSON line per ranked sample or reply here (every sample; with "
                        "--no-generate, those with a target): its top 10 (none for a reply --inject target-turns "
                        "did not rank) item ids, the target's rank, and for each recommender "
                        "turn the reference and the generated reply")
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
    from ..backbone import default_device
    from ..pretrained import checkpoint_dir, load_pretrained, read_meta
    from ..standardized import evaluate_model, load_collection, restrict
    from ..prepare import prepare
    from ..experiments.provenance import git_revision, hardware, now

    ckpt = checkpoint_dir(args.run_dir)
    meta = read_meta(ckpt)
    revision = git_revision()
    dataset, own = _measured_dataset(args.dataset, ckpt, meta, folder=False)
    variant = _variant(args, dataset, own, meta)
    out = _output_path(args.output, ckpt, _result_name("standardized", variant), dataset=dataset)
    _say_where(args.output, out, variant, _result_path(ckpt, "eval_standardized.json").name)
    model, config = load_pretrained(ckpt, backbone=args.backbone)
    inference = _inference_settings(config, args)
    collection = restrict(load_collection(dataset), args.max_samples)
    dtype = _apply_dtype(model, inference.dtype, default_device(args.device))
    # A test file given: its catalog is the dataset folder's that holds it (test_data.jsonl or official/).
    folder = dataset if dataset.is_dir() else dataset.parent.parent if dataset.parent.name == "official" else dataset.parent
    setup = prepare(config, model=model, dataset=str(folder), device=default_device(args.device),
                    saved_vectors_from=None if getattr(args, "item_fields", None) else ckpt)
    result = evaluate_model(setup.model, setup.store, setup.encoder, collection,
                            m_inference=inference.m_inference, batch_size=inference.batch_size,
                            chunk_size=inference.rerank_chunk_size, exclude_mentioned=inference.exclude_mentioned,
                            progress=not args.json, log=lambda msg: print(msg, file=sys.stderr))
    out.write_text(json.dumps({"checkpoint": str(ckpt), "protocol": "standardized", "collection": collection.path,
                               **_measured_on(dataset, args),
                               "m_inference": inference.m_inference, "exclude_mentioned": inference.exclude_mentioned,
                               "dtype": dtype, **result,
                               "measured": {"date": now(), "git_revision": revision, "hardware": hardware()}}, indent=2))
    _print_standardized(result, args.json)
    return 0


def _baseline(args) -> int:
    from ..standardized import catalog_ids, evaluate_naive, load_collection, restrict

    # --max-samples cuts as `pecrs evaluate --protocol standardized --max-samples N` does: the same instances.
    collection = restrict(load_collection(args.dataset_dir), args.max_samples)
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
    naive.add_argument("--max-samples", type=positive_int, help="the whole conversations holding the first N "
                                                                 "instances (as pecrs evaluate --max-samples N)")
    naive.add_argument("--json", action="store_true", help="print one JSON object {\"full\": ..., \"dedup\": ...}")
    naive.set_defaults(func=_baseline)
