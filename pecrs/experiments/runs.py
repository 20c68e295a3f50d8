"""Training runs (DIR/runs/<dataset>-<hash>/, see parts.py): the parts that train them, how far
they got, and the parts that evaluate their checkpoints, or those of a model given instead
(`ctx.given`, given.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from .caches import eval_setup, free_memory
from .json_files import read_json, write_json
from .keys import dataset_key, dataset_label, train_key
from .parts import DONE_FILE, Blocked, Context, InProgress, Part
from .provenance import hardware, hardware_summary


def run_dir(ctx: Context, config: RunConfig) -> Path:
    """The run folder of a training config: named by dataset and config hash only, so every
    experiment that needs the same model finds the same folder."""
    return ctx.runs / f"{dataset_key(config)}-{train_key(config)}"


def training_part(ctx: Context, name: str, config: RunConfig, describe: str = "") -> Part:
    given = ctx.given.get(train_key(config))
    if given is not None:
        # Recorded with the config it was trained with, not the evaluation's overrides.
        return Part(name=name, kind="train", run=lambda: dict(given.info), spec=given.spec(),
                    dataset=dataset_key(config), config=given.config, train_key=train_key(config),
                    describe=f"the given model {given.info['model']} (not trained here)")
    folder = run_dir(ctx, config)
    return Part(name=name, kind="train", run=lambda: ensure_trained(ctx, config, folder), spec={},
                dataset=dataset_key(config), config=config, train_key=train_key(config),
                describe=describe or f"train on {dataset_label(config)}")


def ensure_trained(ctx: Context, config: RunConfig, folder: Path) -> dict:
    """Train (or resume) the run in `folder`; return its summary. Stops at max_train_minutes:
    then raises `InProgress` so the part stays unfinished and the next call resumes it."""
    done = read_json(folder / DONE_FILE)
    if done is not None:
        return {**done, "reused": True}
    from ..train import train

    started = time.perf_counter()
    state = train(config, folder, progress=ctx.progress)
    seconds = time.perf_counter() - started
    free_memory()
    info = {"run_dir": folder.name, "epochs": config.train.epochs, "epoch": state["epoch"],
            "batch": state.get("batch", 0), "global_step": state["global_step"], "best": state["best"],
            "best_epoch": state["best_epoch"], "seconds_last_call": round(seconds, 2),
            "hardware": hardware_summary(hardware()), **batch_timing(folder, config)}
    if state.get("stopped_early") or state["epoch"] < config.train.epochs:
        raise InProgress(info)
    info["finished"] = True
    write_json(folder / DONE_FILE, info)
    return info


def training_progress(ck: dict) -> str:
    """How far a checkpoint's training got: "2/20 epochs", or "812 batches into epoch 1/20"."""
    epoch, epochs, batch = int(ck.get("epoch") or 0), ck.get("epochs"), int(ck.get("batch") or 0)
    return f"{batch} batches into epoch {epoch + 1}/{epochs}" if batch else f"{epoch}/{epochs} epochs"


def training_in_progress(ctx: Context, config: RunConfig) -> dict | None:
    """What a run folder's mid-training checkpoint says (epoch, batch, time per batch), when the
    run has one and has not finished; else None."""
    folder = run_dir(ctx, config)
    meta = read_json(folder / "last" / "pecrs_config.json")
    if meta is None or (folder / DONE_FILE).is_file():
        return None
    trainer = meta.get("trainer", {})
    return {"run_dir": folder.name, "epoch": trainer.get("epoch"), "batch": trainer.get("batch"),
            "epochs": config.train.epochs, **batch_timing(folder, config)}


def batch_timing(folder: Path, config: RunConfig) -> dict:
    """Seconds per training batch over every call so far: the summed training-loop seconds of
    metrics.jsonl (each epoch record and each time-budget stop covers one stretch of batches) over
    the batches run (optimizer steps x grad_accum). Dev evaluation is not in those seconds."""
    seconds, steps = 0.0, 0
    path = folder / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            seconds += float(rec.get("seconds") or 0.0)
            if "global_step" in rec:
                steps = max(steps, int(rec["global_step"]))
    state_file = folder / "last" / "trainer_state.pt"
    if state_file.is_file():
        import torch

        try:
            # weights_only: a run folder from elsewhere must not execute pickled code.
            state = torch.load(state_file, map_location="cpu", weights_only=True)["state"]
            steps = max(steps, int(state["global_step"]))
        except Exception:  # noqa: BLE001 - timing is informative only
            pass
    batches = steps * max(config.train.grad_accum, 1)
    return {"train_seconds": round(seconds, 2), "train_batches": batches,
            "seconds_per_batch": round(seconds / batches, 4) if batches else None}


def checkpoint(ctx: Context, train_config: RunConfig) -> tuple[Path, dict]:
    """The checkpoint an evaluation uses and what is known about its training."""
    given = ctx.given.get(train_key(train_config))
    if given is not None:
        return given.checkpoint, dict(given.info)
    folder = run_dir(ctx, train_config)
    done = read_json(folder / DONE_FILE)
    best, last = folder / "best", folder / "last"
    if done is not None:
        ckpt = best if (best / "pecrs_config.json").is_file() else last
        return ckpt, {"run_dir": folder.name, "checkpoint": ckpt.name, "finished": True,
                      "best_epoch": done.get("best_epoch"), "epochs": done.get("epochs")}
    if not ctx.accept_partial:
        raise Blocked(f"its model ({folder.name}) has not finished training; run its training part first "
                      "(or pass --accept-partial to evaluate the checkpoint so far)")
    for ckpt in (best, last):
        if (ckpt / "pecrs_config.json").is_file():
            meta = read_json(ckpt / "pecrs_config.json") or {}
            trainer = meta.get("trainer", {})
            return ckpt, {"run_dir": folder.name, "checkpoint": ckpt.name, "finished": False,
                          "epoch": meta.get("epoch", trainer.get("epoch")), "batch": meta.get("batch", trainer.get("batch")),
                          "epochs": train_config.train.epochs}
    raise Blocked(f"{folder.name} has no checkpoint yet; run its training part first")


def eval_part(ctx: Context, name: str, train_config: RunConfig, body: Callable, spec: dict,
              config: RunConfig | None = None, describe: str = "") -> Part:
    """A part that evaluates the model trained with `train_config`: body(setup) -> result. `config`
    (default: the training config) sets what evaluation reads: item fields, split, M_inference..."""
    config = config or train_config
    given = ctx.given.get(train_key(train_config))
    if given is not None:
        spec = {**spec, **given.spec()}

    def run():
        ckpt, info = checkpoint(ctx, train_config)
        setup = eval_setup(ckpt, config)
        result = body(setup)
        result["checkpoint"] = info
        return result

    return Part(name=name, kind="eval", run=run, spec=spec, dataset=dataset_key(config), config=config,
                train_key=train_key(train_config), describe=describe)
