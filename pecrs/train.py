"""The training recipe (§3.6, §4.1): one stage, loss = α·recall + β·rerank + γ·generation.

    pecrs train configs/inspired.yaml --output-dir runs/inspired

Reads top to bottom: data -> model -> optimiser -> epochs of steps -> dev selection. The run
folder gets `last/` (resumable: adapters, heads, optimiser, scheduler, position in the epoch),
`best/` (the checkpoint with the best mean of dev R@1, R@10, R@50), `metrics.jsonl` and
`config.yaml`. Rerunning the same command resumes from `last/` after a crash: every step's
randomness (negatives, dropout, candidate order) is seeded from (seed, epoch, batch), so a
resumed run repeats exactly the steps an uninterrupted run would take.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from .catalog import ItemStore, batch_item_vectors, sample_negatives
from .config import RunConfig
from .data import DatasetBundle, Sample
from .evaluate import recall_only
from .loaders import load_dataset
from .model import PECRS
from .pretrained import build_model, load_weights, save_pretrained
from .samples import make_samples
from .tokens import DialogueEncoder, collate

STATE_FILE = "trainer_state.pt"


@dataclass
class Setup:
    """Everything a recipe needs: model, catalog, encoder and samples of each split."""
    config: RunConfig
    model: PECRS
    bundle: DatasetBundle
    store: ItemStore
    encoder: DialogueEncoder
    samples: dict[str, list[Sample]]


def prepare(config: RunConfig, model: PECRS | None = None, dataset: str | None = None,
            device: str | torch.device | None = None) -> Setup:
    """Data, catalog and model of a run. `device`: where the model goes *before* the catalog's
    item states are computed (encoding a catalog on a CPU when a GPU is there wastes minutes)."""
    m, t = config.model, config.train
    model = model if model is not None else build_model(config, seed=t.seed)
    if device is not None:
        model.to(device)
    bundle = load_dataset(dataset or t.dataset)
    store = ItemStore(list(bundle.items.values()), model.tokenizer, m.item_fields, m.item_max_tokens)
    if m.item_encoding == "cached":
        store.cache_base_states(model)
    elif m.item_encoding != "adapted":
        raise ValueError(f"model.item_encoding must be 'cached' or 'adapted', not '{m.item_encoding}'")
    encoder = DialogueEncoder(model.tokenizer, store.index, m.context_max_tokens, m.response_max_tokens)
    samples = {name: make_samples(dialogues) for name, dialogues in bundle.splits.items()}
    if t.max_train_samples and t.train_split in samples:
        samples[t.train_split] = samples[t.train_split][: t.max_train_samples]
    if t.max_eval_samples:
        for name in (t.dev_split, t.test_split):
            if name in samples:
                samples[name] = samples[name][: t.max_eval_samples]
    return Setup(config, model, bundle, store, encoder, samples)


def step_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**31)


def training_step_losses(model: PECRS, store: ItemStore, batch, config: RunConfig, generator: torch.Generator):
    """Sample the batch's negatives (§3.6) and compute the three losses."""
    t = config.train
    B = len(batch.target)
    positives = batch.target[batch.target >= 0]
    n_items = len(store)
    rows = None if t.share_negatives_batch else B
    recall_neg = sample_negatives(n_items, positives, t.m_train, rows, generator)
    rerank_neg = recall_neg if t.share_negatives_tasks else sample_negatives(n_items, positives, t.m_train, rows, generator)
    if rows is None:
        recall_neg, rerank_neg = recall_neg.expand(B, -1), rerank_neg.expand(B, -1)
    vectors, row = batch_item_vectors(model, store, batch.target, recall_neg, rerank_neg, batch.context_items,
                                      batch.gen_items)
    dev = batch.target.device
    return model(batch, vectors, row, recall_neg.to(dev), rerank_neg.to(dev), generator=None)


def total_loss(losses: dict, config: RunConfig) -> torch.Tensor:
    """Eq. 7: α·recall + β·rerank + γ·generation."""
    t = config.train
    return t.alpha * losses["recall"] + t.beta * losses["rerank"] + t.gamma * losses["gen"]


def train(config: RunConfig, output_dir: str | Path, progress: bool = True, stop_after_steps: int | None = None) -> dict:
    t = config.train
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    precision = t.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.grad_accum)

    setup = prepare(config, device=accelerator.device)
    model, store, encoder = setup.model, setup.store, setup.encoder
    train_samples = setup.samples[t.train_split]
    if not train_samples:
        raise ValueError(f"split '{t.train_split}' of {t.dataset} has no samples to train on")
    encoded = encoder.encode_all(train_samples)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW on GPUs: one kernel for all parameters instead of several per tensor (a PECRS
    # step on a small backbone is dominated by kernel launches, docs/results.md).
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                                  fused=accelerator.device.type == "cuda")
    world = accelerator.num_processes
    batches_per_epoch = math.ceil(len(encoded) / (t.batch_size * world))
    updates_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_epochs * updates_per_epoch),
                                                updates_per_epoch * t.epochs)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)

    state = {"epoch": 0, "batch": 0, "global_step": 0, "best": -1.0, "best_epoch": None}
    last = out / "last"
    if (last / STATE_FILE).is_file():
        state = _resume(core, optimizer, scheduler, last)
        accelerator.print(f"resuming from {last}: epoch {state['epoch']}, batch {state['batch']}")

    log_path = out / "metrics.jsonl"
    steps_done = 0
    deadline = time.perf_counter() + 60 * t.max_train_minutes if t.max_train_minutes else None
    for epoch in range(state["epoch"], t.epochs):
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(step_seed(t.seed, epoch, -1)))
        batches = [order[i:i + t.batch_size * world] for i in range(0, len(order), t.batch_size * world)]
        model.train()
        started, sums = time.perf_counter(), {"loss": 0.0, "recall": 0.0, "rerank": 0.0, "gen": 0.0, "n": 0}
        bar = tqdm(range(state["batch"], len(batches)), desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=not (progress and accelerator.is_main_process))
        for b in bar:
            rank_rows = batches[b][accelerator.process_index::world]
            batch = collate([encoded[i] for i in rank_rows], core.tokenizer.pad_token_id, core.rec_end_id)
            batch = batch.to(accelerator.device)
            seed = step_seed(t.seed, epoch, b)
            torch.manual_seed(seed)  # dropout
            generator = torch.Generator().manual_seed(seed)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    losses = training_step_losses(model, store, batch, config, generator)
                loss = total_loss(losses, config)
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                    state["global_step"] += 1
                optimizer.zero_grad()
            # Running sums stay on the device: reading a value each step would wait for the GPU.
            for k in ("recall", "rerank", "gen"):
                sums[k] += losses[k].detach()
            sums["loss"] += loss.detach()
            sums["n"] += 1
            if sums["n"] % 50 == 1:
                bar.set_postfix(loss=f"{float(sums['loss']) / sums['n']:.3f}")
            state["batch"] = b + 1
            steps_done += 1
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if out_of_time or (stop_after_steps is not None and steps_done >= stop_after_steps):
                _save_last(core, config, optimizer, scheduler, state, last, accelerator)
                state["stopped_early"] = True
                if out_of_time and accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps({"stopped": "max_train_minutes", "epoch": epoch + 1, "batch": b + 1,
                                            "global_step": state["global_step"],
                                            "seconds": round(time.perf_counter() - started, 2),
                                            "lr": scheduler.get_last_lr()[0], **mean_losses(sums)}) + "\n")
                return state
            if t.checkpoint_every and accelerator.sync_gradients and state["batch"] % t.checkpoint_every == 0:
                _save_last(core, config, optimizer, scheduler, state, last, accelerator)

        record = {"epoch": epoch + 1, "global_step": state["global_step"],
                  "seconds": round(time.perf_counter() - started, 2), "lr": scheduler.get_last_lr()[0]}
        record.update(mean_losses(sums))
        state["epoch"], state["batch"] = epoch + 1, 0
        if accelerator.is_main_process:
            if (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs:
                dev = setup.samples.get(t.dev_split) or []
                if dev:
                    scores = recall_only(core, store, encoder, dev, t.m_inference, t.eval_batch_size)
                    record.update({f"dev_{k}": v for k, v in scores.items()})
                    if scores["recall_mean"] > state["best"]:
                        state["best"], state["best_epoch"] = scores["recall_mean"], epoch + 1
                        save_pretrained(core, config, out / "best", {"epoch": epoch + 1, "dev": scores})
                else:  # no dev split: the last epoch is the one kept
                    state["best_epoch"] = epoch + 1
                    save_pretrained(core, config, out / "best", {"epoch": epoch + 1})
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            accelerator.print(json.dumps(record))
        _save_last(core, config, optimizer, scheduler, state, last, accelerator)
    return state


def mean_losses(sums: dict) -> dict:
    """train_loss/recall/rerank/gen: the means over the batches of this stretch of training."""
    return {f"train_{k}": float(sums[k]) / max(sums["n"], 1) for k in ("loss", "recall", "rerank", "gen")}


def _save_last(core, config, optimizer, scheduler, state, last: Path, accelerator) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": dict(state)}
    save_pretrained(core, config, last, {"trainer": dict(state)}, extra_files={STATE_FILE: trainer})


def _resume(core, optimizer, scheduler, last: Path) -> dict:
    load_weights(core, last)
    trainer = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    return trainer["state"]
