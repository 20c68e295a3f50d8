"""Turn a trained run into a model that ships: `pecrs export RUN DEST`.

    DEST/pecrs_config.json          config, shapes, provenance ("export")
    DEST/adapter/                   LoRA + special-token rows, float16 safetensors
    DEST/heads.safetensors          item encoder, f, g (float16)
    DEST/items.jsonl                the catalog
    DEST/item_vectors.safetensors   its item vectors (float16): loading encodes nothing
    DEST/MODEL_CARD.md              data, settings, hardware, date, git revision, metrics, limits

Copied to pecrs/models/NAME, the folder is what `Recommender.from_pretrained("NAME")`, `pecrs chat`
and `pecrs serve` load with no run folder (NAME "inspired" is the default). A run folder keeps its
own metrics: RUN/metrics.jsonl (dev curve) and RUN/eval_test.json (`pecrs evaluate RUN`), both
quoted in the card when present (eval_test.json only when measured on the run's own dataset, of
the checkpoint exported: a best/ saved since, at another epoch, is not the one it measured).
"""
from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import torch

from .config import RunConfig
from .experiments.json_files import read_json
from .experiments.provenance import git_revision
from .catalog_source import CATALOG_FILE
from .pretrained import check_save_destination, checkpoint_dir, read_meta, results_dir

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
CARD_METRICS = ("recall@1", "recall@10", "recall@50", "dedup_recall@1", "dedup_recall@10", "dedup_recall@50",
                "unique", "rouge1", "rouge2", "rouge1_paper_protocol", "rouge2_paper_protocol", "f1_item", "ppl",
                "dist2", "dist3", "dist4")


def export(run: str | Path, destination: str | Path, catalog=None, device=None, notes: str | None = None,
           no_repeat_ngram: int | None = None, decoding: str | None = None) -> Path:
    """Write the shipped form of `run` (a run folder or checkpoint) to `destination`. `notes`:
    markdown for the card's "About this model" (how and why it was trained, what it is not).
    no_repeat_ngram, decoding: the shipped inference.no_repeat_ngram and inference.decoding
    (None: the run's)."""
    from .recommender import Recommender

    ckpt = checkpoint_dir(run)
    run_dir = results_dir(ckpt)
    # Before minutes of loading; the rule `Recommender.save_pretrained` applies again when it writes.
    check_save_destination(Path(destination), CATALOG_FILE, sources=(ckpt, run_dir))
    # float32: the shipped item vectors must not carry a bfloat16 encoder's rounding.
    rec = Recommender.from_pretrained(ckpt, catalog=catalog, device=device, cache_dir=False, dtype="float32",
                                      no_repeat_ngram=no_repeat_ngram, decoding=decoding)
    provenance = {"source": str(ckpt), "git_revision": git_revision() or "unknown", "hardware": hardware(),
                  "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    destination = rec.save_pretrained(destination, half=True, extra={"export": provenance})
    meta = read_meta(destination)
    test = read_json(run_dir / "eval_test.json")
    elsewhere = (measured_elsewhere(test, ckpt, meta["config"].get("train", {}).get("dataset"))
                 or measured_before(test, read_meta(ckpt)))
    if elsewhere:
        log.warning("%s: not quoted in the model card: %s", run_dir / "eval_test.json", elsewhere)
    card = model_card(destination.name, meta, _read_jsonl(run_dir / "metrics.jsonl"),
                      None if elsewhere else test, destination, notes, left_out=elsewhere)
    (destination / CARD_FILE).write_text(card)
    return destination


def measured_elsewhere(test: dict | None, checkpoint: Path, dataset: str | None) -> str | None:
    """Why `test` (RUN/eval_test.json) is not the run's test metrics: it records another dataset
    than the run's (`dataset`, found as `pecrs evaluate` finds it; a byte copy elsewhere, such as
    the GPU machine's, is the same dataset). None when it is the run's, or when it records no
    dataset (written before results did: quoted as before)."""
    from .run_dataset import DatasetNotFound, find_dataset, matches_record

    if not test or "dataset" not in test or not dataset:
        return None
    try:
        own = find_dataset(dataset, checkpoint)
    except DatasetNotFound:
        return f"it was measured on {test['dataset']}; the run's dataset {dataset} was not found to compare it with"
    if matches_record(test, own):
        return None
    if Path(test["dataset"]).resolve() == own.resolve():
        return f"it was measured on {own}, whose files changed since"
    return f"it was measured on {test['dataset']}, not on the run's dataset {own}"


def checkpoint_position(meta: dict) -> dict:
    """The training position a checkpoint was saved at, as an evaluation records it beside the
    checkpoint's path: {"checkpoint_position": {"epoch": e[, "batch": b]}} (best/ holds it), {}
    for one that holds none (an export; the GPU flow's adopted best/; last/, which keeps its
    position with the trainer state)."""
    if "epoch" not in meta:
        return {}
    return {"checkpoint_position": {k: meta[k] for k in ("epoch", "batch") if k in meta}}


def measured_before(test: dict | None, meta: dict) -> str | None:
    """Why `test` is not the metrics of the checkpoint of `meta`: it evaluated the run's best/ as
    it was at another training position (training went on and found a better dev epoch since).
    None when both positions are known and equal, or either is not recorded (nothing to compare)."""
    then = (test or {}).get("checkpoint_position")
    now = checkpoint_position(meta).get("checkpoint_position")
    if then is None or now is None or then == now:
        return None
    return (f"it evaluated the checkpoint saved at {_position(then)}, and the one exported was saved at "
            f"{_position(now)}; run `pecrs evaluate` on the run again")


def _position(position: dict) -> str:
    return f"epoch {position['epoch']}" + (f", batch {position['batch']}" if "batch" in position else "")


def _hard_negatives_note(t: dict) -> str:
    """The card's words for `train.hard_negatives` ("" without them). A run saved before
    `hard_negatives_from_epoch` existed (commit 4a4a28d only) drew them from epoch 1."""
    if not t.get("hard_negatives"):
        return ""
    return (f"; {t['hard_negatives']} of the M_train negatives drawn from recall's top {t.get('hard_negative_depth')} "
            f"(from epoch {t.get('hard_negatives_from_epoch', 1)})")


def model_card(name: str, meta: dict, curve: list[dict], test: dict | None, folder: Path,
               notes: str | None = None, left_out: str | None = None) -> str:
    """MODEL_CARD.md: what a user needs to judge the model before trusting its recommendations.
    `left_out`: why the run's eval_test.json is not quoted (`measured_elsewhere`, `measured_before`)."""
    config, export_info = meta["config"], meta.get("export", {})
    m, t = config["model"], config["train"]
    inference = RunConfig.from_dict(config).inference  # (older checkpoints: read from train / "recommender")
    inference.m_inference = meta.get("recommender", {}).get("m_inference", inference.m_inference)
    inference.decoding = meta.get("recommender", {}).get("decoding", inference.decoding)
    subset = f"; the first {t['max_train_samples']:,} training samples" if t.get("max_train_samples") else ""
    start = f"; fine-tuned from `{t['init_from']}`" if t.get("init_from") else ""
    lines = [f"# pecrs model card: {name}", "",
             "PECRS (Ravaut et al., EACL 2024): one LoRA-adapted language model that retrieves, re-ranks and "
             "writes the recommender's reply.", ""]
    if notes:
        lines += ["## About this model", "", notes.strip(), ""]
    lines += ["## Data and settings", "",
             f"- Backbone: `{m['backbone']}` ({meta['model_type']}, hidden size {meta['hidden_size']}), frozen; "
             f"LoRA r={m['lora_r']}, alpha={m['lora_alpha']}, targets {m['lora_target_modules'] or 'attention projections'}",
             f"- Data: `{t['dataset']}` (train split `{t['train_split']}`, checkpoint chosen on `{t['dev_split'] or 'the last epoch'}`)",
             f"- Training: {t['epochs']} epoch{'s' if t['epochs'] != 1 else ''} planned, batch {t['batch_size']} x {t['grad_accum']}, lr {t['lr']}"
             f"{' (reference batch ' + str(t['lr_reference_batch']) + ')' if t.get('lr_reference_batch') else ''}, "
             f"M_train {t['m_train']}, loss weights alpha/beta/gamma {t['alpha']}/{t['beta']}/{t['gamma']} "
             f"({t.get('loss_normalization', 'batch')} normalisation), item encoding `{m['item_encoding']}`"
             f"{' (pooled states standardized)' if m.get('item_standardize') else ''}"
             f"{'; trained on the samples with a target only' if t.get('targets_only') else ''}"
             f"{'; without the samples whose target their dialogue mentioned before' if t.get('fresh_targets_only') else ''}"
             f"{_hard_negatives_note(t)}"
             f"{subset}{start}",
             f"- Inference: M_inference {inference.m_inference}, decoding `{inference.decoding}`"
             f"{f', no {inference.no_repeat_ngram}-gram twice in a reply' if inference.no_repeat_ngram else ''}",
             f"- Exported {export_info.get('date', '?')} from `{export_info.get('source', '?')}` at git "
             f"`{export_info.get('git_revision', '?')}` on {export_info.get('hardware', '?')} (torch {export_info.get('torch', '?')})",
             "", "## Dev curve", ""]
    # Epoch ends, and the dev evaluation of a run stopped by its deadline mid-epoch.
    epochs = [r for r in curve if "epoch" in r and ("stopped" not in r or "dev_recall@1" in r)]
    if epochs:
        lines += ["| epoch | train loss | dev R@1 | dev R@10 | dev R@50 |", "|---|---|---|---|---|"]
        for r in epochs:
            label = (f"{r['epoch']} (stopped at batch {r.get('batch')})" if "stopped" in r else
                     f"{r['epoch']} (resumed at batch {r['train_from_batch']})" if "train_from_batch" in r else
                     f"{r['epoch']}")
            loss = "n/a" if r.get("train_loss") is None else f"{r['train_loss']:.3f}"   # null: it diverged (NaN)
            lines.append(f"| {label} | {loss} | {_pct(r.get('dev_recall@1'))} | "
                         f"{_pct(r.get('dev_recall@10'))} | {_pct(r.get('dev_recall@50'))} |")
    else:
        lines.append("No dev evaluation was found in metrics.jsonl beside the checkpoint.")
    stops = [i for i, r in enumerate(curve) if "stopped" in r]
    if stops:
        stop = curve[stops[-1]]
        where = (f"({stop['stopped']}) at epoch {stop.get('epoch')}, batch {stop.get('batch')}, after "
                 f"{stop.get('seconds', 0) / 60:.0f} minutes")
        # A rerun of the same command resumes from last/: a later epoch end means the run went on.
        if any("epoch" in r and "stopped" not in r for r in curve[stops[-1] + 1:]):
            lines.append(f"\nTraining stopped {where}, then resumed from that checkpoint and went on; "
                         "a resumed row's train loss covers the batches since the resume.")
        else:
            lines.append(f"\nTraining stopped early {where}.")
    lines += ["", *card_test_metrics(test, left_out)]
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    lines += ["", "## Limitations", "",
              "- Recommends only items of its catalog; another catalog (`--catalog`) is encoded on first use, and "
              "the model has never seen those items in training.",
              "- Trained on crowd-sourced English movie dialogues: expect their biases (popular titles, US films).",
              "- Replies are sampled from a small language model and can be wrong about plots, casts or years.",
              "- Recall figures include targets already mentioned in the dialogue; see the dedup_ rows.",
              "", "## Files", "", "| file | bytes |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in sorted(sizes.items()) if k != CARD_FILE]
    return "\n".join(lines) + "\n"


def hardware() -> str:
    from .precision import cpu_model

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def card_test_metrics(test: dict | None, left_out: str | None = None) -> list[str]:
    """The card's "## Test metrics" lines from a `pecrs evaluate --json` result (None: not
    evaluated, or `left_out` says why eval_test.json is not quoted)."""
    lines = ["## Test metrics", ""]
    if left_out:
        return lines + [f"Not quoted: the run's eval_test.json is not its test metrics ({left_out}). "
                        f"`pecrs evaluate RUN` measures them on the run's own dataset."]
    if not test:
        return lines + ["Not evaluated on a test split (no eval_test.json beside the run)."]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_metric(k, test[k])} |" for k in CARD_METRICS if test.get(k) is not None]  # unmeasured: left out
    samples = f"{test.get('n_rec_samples', '?')} samples with a target"
    if test.get("max_samples"):   # a partial evaluation, or other item texts, says so
        samples = f"the first {test['max_samples']} samples of the split, {samples}"
    if test.get("item_fields"):
        samples += f", item fields {','.join(test['item_fields'])}"
    if test.get("n_gen_samples") is not None:
        samples += f", {test['n_gen_samples']} replies generated"
    excluded = ", the items a conversation mentions excluded" if test.get("exclude_mentioned") else ""
    lines.append(f"\nFrom `pecrs evaluate` on split `{test.get('split', '?')}` ({samples}, M_inference "
                 f"{test.get('m_inference', '?')}{excluded}, decoding `{test.get('decoding', '?')}`, "
                 f"no_repeat_ngram {test.get('no_repeat_ngram', 0)}).")
    genres = test.get("genres") or {}
    if genres.get("accuracy") is not None:
        lines.append(f"Genre of the top-1 (Tables 9-10): the target's first genre in {_pct(genres['accuracy'])}% of "
                     f"samples; among wrong top-1 items {_pct(genres.get('wrong_genre_rate'))}%, against "
                     f"{_pct(genres.get('random_genre_rate'))}% for a random wrong item.")
    return lines


def _metric(name: str, value) -> str:
    """Recall (a share of samples) in percent, as the paper's tables print it; other metrics as
    `pecrs evaluate` reports them, to four significant digits."""
    if "recall" in name:
        return f"{_pct(value)}%"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

