"""The training recipe (§3.6, §4.1): one stage, loss = α·recall + β·rerank + γ·generation.

    pecrs train configs/inspired.yaml --output-dir runs/inspired

Reads top to bottom: data -> model -> optimiser -> epochs of steps -> dev selection. The run
folder gets `last/` (resumable: adapters, heads, optimiser, scheduler, position in the epoch),
`best/` (the checkpoint with the best mean of dev R@1, R@10, R@50), `metrics.jsonl` and
`config.yaml`. Rerunning the same command resumes from `last/` after a crash: every step's
randomness (negatives, dropout, candidate order) is seeded from (seed, epoch, batch), so a
resumed run repeats exactly the steps an uninterrupted run would take. Resuming with other data
or another model section is refused (`check_same_data`, `check_same_model`); a start that fails
leaves the run folder as it was (config.yaml is written once everything has loaded).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from .catalog import ItemStore
from .config import RunConfig
from .evaluate import recall_only
from .hard_negatives import recall_neighbours
from .run_dataset import check_same_data, dataset_record
from .prepare import Setup, prepare, say
from .model import PECRS
from .pretrained import (check_architecture, check_same_model, init_from_checkpoint, load_weights, read_meta,
                         recover_checkpoint, save_pretrained)
from .step import (StepRunner, cast_frozen, item_slots, plan_step, resolve_step_mode, restore_grads, saved_grads,
                   scaled_lr, shard, step_losses)
from .tokens import collate, static_widths

STATE_FILE = "trainer_state.pt"
LOSS_REFRESH_SECONDS = 2.0  # how often the train bar's loss is read back from the device


def step_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**31)


def training_step_losses(model: PECRS, store: ItemStore, batch, config: RunConfig, generator: torch.Generator):
    """Sample the batch's negatives (§3.6) and compute the three losses: `plan_step` on the host,
    then `step_losses` on the device. `train` runs the same two with fixed shapes, seeded dropout
    and its step mode's candidate slots (`StepRunner`); this short form is for tests and benchmarks."""
    inputs = plan_step(batch.to("cpu"), len(store), config.train, generator)
    return step_losses(model, store, inputs.to(model.device), config.train)


def parameter_groups(model: PECRS, lr: float, special_token_lr_scale: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups: the special-token rows (peft's trainable-token delta) at
    lr x special_token_lr_scale, every other trainable parameter (LoRA, heads) at lr. The
    scheduler scales both groups alike, so the ratio holds through warm-up and decay. A scale of
    1 keeps one group, so that runs saved before the setting existed resume as they were."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    special = [p for name, p in trainable if "trainable_tokens_delta" in name]
    rest = [p for name, p in trainable if "trainable_tokens_delta" not in name]
    if special_token_lr_scale == 1.0 or not special:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    return [{"params": rest, "lr": lr}, {"params": special, "lr": lr * special_token_lr_scale}]


def total_loss(losses: dict, config: RunConfig) -> torch.Tensor:
    """Eq. 8: α·recall + β·rerank + γ·generation."""
    t = config.train
    return t.alpha * losses["recall"] + t.beta * losses["rerank"] + t.gamma * losses["gen"]


def train(config: RunConfig, output_dir: str | Path, progress: bool = True, stop_after_steps: int | None = None) -> dict:
    """Train PECRS in one stage (§3.6) into `output_dir`, resuming from its last/ when there is one.
    In order: processes and precision (accelerate); the data, model and item store (`prepare`);
    the step's shapes and mode (static widths, eager/compiled/graph); optimiser and schedule,
    restored on resume; the epoch loop (`_forward_backward` per batch, a deadline, last/ saved);
    dev selection after each epoch (`_select_on_dev` keeps best/). Returns the trainer state
    (epoch, batch, global_step, best dev score and its epoch; stopped_early when cut short).
    `stop_after_steps`: stop (and save last/) after that many batches, at the end of an update (tests)."""
    t = config.train
    out = Path(output_dir)
    precision = t.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Launched as several processes (torchrun sets WORLD_SIZE): without a GPU, accelerate only joins
    # the process group when told `cpu=True` (gloo); otherwise every process would train alone on
    # the whole data and write the same run folder (tests/test_distributed.py).
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=t.grad_accum,
                              cpu=launched > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes, but accelerate set up {accelerator.num_processes} "
                           f"({accelerator.distributed_type}): check the launcher's device settings")
    device = accelerator.device
    cuda = device.type == "cuda"
    show = progress and accelerator.is_main_process
    last = out / "last"
    if accelerator.is_main_process:  # a crash between the two renames of a save loses nothing
        recover_checkpoint(last)
        recover_checkpoint(out / "best")
    accelerator.wait_for_everyone()
    # Resuming (a run folder with last/): the same model and data or nothing.
    resuming = (last / STATE_FILE).is_file()
    if resuming:
        check_same_model(config, last, f"resuming {out} (another --output-dir starts a new run)")
        check_same_data(config, last, f"resuming {out} (another --output-dir starts a new run)")

    frozen = t.frozen_dtype if t.frozen_dtype != "auto" else ("bfloat16" if precision == "bf16" else "float32")
    if frozen == "bfloat16" and precision != "bf16":  # said before minutes of loading, not at the first step
        raise ValueError(f"train.frozen_dtype=bfloat16 needs bfloat16 autocast (train.mixed_precision=bf16); "
                         f"mixed precision here is '{precision}'")
    setup = prepare(config, device=device, progress=show)
    model, store, encoder = setup.model, setup.store, setup.encoder
    have = ", ".join(sorted(setup.samples)) or "none"
    if t.train_split not in setup.samples:
        raise ValueError(f"train.train_split: {t.dataset} has no split '{t.train_split}' (it has {have})")
    if t.dev_split and t.dev_split not in setup.samples:  # '' (the ReDial experiments): no dev, by choice
        say(f"no split '{t.dev_split}' in {t.dataset} (it has {have}): no dev selection, best/ is the latest model",
            accelerator.is_main_process)
    train_samples = setup.samples[t.train_split]
    if not train_samples:
        raise ValueError(f"split '{t.train_split}' of {t.dataset} has no samples to train on")
    # Refused, not warned: recall and re-ranking (the recommender) would learn nothing, which a
    # warning scrolled away by the progress bars reveals only after the whole run; stopping now
    # loses nothing. Without those losses (alpha = beta = 0) the replies alone train, as asked.
    if (t.alpha or t.beta) and not any(s.target is not None for s in train_samples):
        sliced = f" (train.max_train_samples={t.max_train_samples})" if t.max_train_samples else ""
        raise ValueError(f"split '{t.train_split}' of {t.dataset}: none of its {len(train_samples):,} training "
                         f"samples{sliced} recommends a catalog item, so the recall and re-rank losses "
                         f"(train.alpha, train.beta) have nothing to learn from; check that its dialogues' item "
                         f"ids are those of the catalog (ReDial-format data without respondentQuestions forms: "
                         f"train.redial_mentions=all), or set train.alpha=0 train.beta=0 to train the replies only")
    dev = dev_targets(setup, config)
    if t.dev_split in setup.samples and not dev:
        n, sliced = len(setup.samples[t.dev_split]), " (train.max_eval_samples)" if t.max_eval_samples else ""
        say(f"split '{t.dev_split}' of {t.dataset}: none of its {n:,} samples{sliced} recommends an item (nothing "
            f"to rank): no dev selection, best/ is the latest evaluated model", accelerator.is_main_process)
    # Before the run folder is made (a wrong checkpoint leaves nothing behind), any step and the
    # model's wrapping; a resumed run reads them back from last/.
    if t.init_from and not resuming:  # the checkpoint's heads carry its item standardization
        say(f"starting from {init_from_checkpoint(model, config, t.init_from)}", show)
    elif resuming:  # another backbone (same settings, other shapes) cannot load last/'s weights
        check_architecture(model, read_meta(last), f"resuming {out} (another --output-dir starts a new run)")
    # Everything has loaded and been checked: only now is the run folder made or its config replaced.
    data = dataset_record(Path(t.dataset))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    say(f"encoding {len(train_samples):,} training samples", show)
    encoded = encoder.encode_all(train_samples)

    # Shapes, precision and how the step runs (pecrs.step; docs/performance.md).
    world = accelerator.num_processes
    rows_per_step = t.batch_size * world
    static = cuda if t.static_shapes is None else t.static_shapes
    widths = static_widths(encoder) if static else (None, None)
    slots = item_slots(encoded, rows_per_step, t, len(store)) if static else None
    if frozen == "bfloat16":
        cast_frozen(model, torch.bfloat16)
    store.to(device)
    mode = resolve_step_mode(t.step_mode, device, static)

    # Before any step and before the model is wrapped; a resumed run reads it back from last/.
    if config.model.item_standardize and not resuming and not t.init_from:
        say("fitting the item standardization on the catalog's pooled states", show)
        with accelerator.autocast():  # bfloat16 frozen weights run under autocast
            model.item_encoder.fit_standardization(store.base_pooled_states(model))

    params = [p for p in model.parameters() if p.requires_grad]
    effective_batch = rows_per_step * t.grad_accum
    lr = scaled_lr(t, effective_batch)
    # Fused AdamW on GPUs: one kernel for all parameters instead of several per tensor (a PECRS
    # step on a small backbone is dominated by kernel launches, docs/results.md).
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, t.special_token_lr_scale), lr=lr,
                                  weight_decay=t.weight_decay, fused=cuda)
    # A compiled step with static shapes skips the short last batch of each epoch (see below).
    drop_short = static and mode != "eager"
    batches_per_epoch = len(encoded) // rows_per_step if drop_short and len(encoded) > rows_per_step \
        else math.ceil(len(encoded) / rows_per_step)
    updates_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_epochs * updates_per_epoch)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, updates_per_epoch * t.epochs)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    runner = StepRunner(model, mode, t.compile_backend)
    accelerator.print(json.dumps({"setup": {
        "device": str(device), "processes": world, "effective_batch": effective_batch, "lr": lr,
        "warmup_updates": warmup, "updates_per_epoch": updates_per_epoch, "static_shapes": static,
        "mixed_precision": precision, "frozen_dtype": frozen, "step_mode": runner.mode}}))

    state = {"epoch": 0, "batch": 0, "global_step": 0, "best": -1.0, "best_epoch": None}
    neighbours = None   # train.hard_negatives: each training sample's recall neighbours this epoch
    if resuming:
        state, neighbours = _resume(core, optimizer, scheduler, last)
        accelerator.print(f"resuming from {last}: epoch {state['epoch']}, batch {state['batch']}")
        if not math.isclose(scheduler.base_lrs[0], lr):   # the saved scheduler keeps its base rates
            say(f"train.lr: the resumed run keeps the learning rate it started with ({scheduler.base_lrs[0]:g}, "
                f"not {lr:g}); another --output-dir starts a run at {lr:g}", accelerator.is_main_process)

    log_path = out / "metrics.jsonl"
    steps_done = 0
    # A process's first steps hold compilation, warm-up and CUDA-graph capture (host seconds each).
    first_steps_s, first_epoch = [], state["epoch"]
    deadline = time.perf_counter() + 60 * t.max_train_minutes if t.max_train_minutes else None
    pad_id = core.tokenizer.pad_token_id
    for epoch in range(state["epoch"], t.epochs):
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(step_seed(t.seed, epoch, -1)))
        batches = [order[i:i + rows_per_step] for i in range(0, len(order), rows_per_step)]
        if drop_short and len(batches) > 1 and len(batches[-1]) < rows_per_step:
            # Static shapes include the batch size: the short last batch (other samples each epoch,
            # the order is reshuffled) would cost a second compilation / graph capture.
            batches.pop()
        model.train()
        first_batch = state["batch"]
        started, sums = time.perf_counter(), {"loss": 0.0, "recall": 0.0, "rerank": 0.0, "gen": 0.0, "n": 0}
        hard = t.hard_negatives and epoch + 1 >= t.hard_negatives_from_epoch
        neighbours_s = None   # the epoch's seconds include this pass; metrics.jsonl says how many
        if hard and (neighbours is None or first_batch == 0):
            # From the model as the epoch starts (a run resumed mid-epoch has its epoch's from last/).
            say(f"hard negatives: recall's top {t.hard_negative_depth} for each training sample", show)
            with accelerator.autocast():
                neighbours = recall_neighbours(core, store, train_samples, encoded, t.hard_negative_depth,
                                               config.inference.batch_size, show)
            neighbours_s = round(time.perf_counter() - started, 2)
        bar = tqdm(range(first_batch, len(batches)), desc=f"epoch {epoch + 1}/{t.epochs}", disable=not show)
        shown = None  # when the bar's loss was last refreshed
        for b in bar:
            step_started = time.perf_counter()
            # Host: the whole step's batch, negatives and candidate places, from the step's seed,
            # identical in every process; each process then keeps its own rows.
            seed = step_seed(t.seed, epoch, b)
            batch = collate([encoded[i] for i in batches[b]], pad_id, core.rec_end_id, *widths)
            inputs = plan_step(batch, len(store), t, torch.Generator().manual_seed(seed),
                               candidates=True if (static or world > 1) else None, slots=slots,
                               neighbours=neighbours[batches[b]] if hard else None)
            weights = None
            if world > 1:  # weights: DDP's mean of the processes' gradients = the whole batch's
                inputs, weights = shard(inputs, accelerator.process_index, world, t.loss_normalization)
            if cuda:
                inputs = inputs.pin_memory()
            inputs = inputs.to(device, non_blocking=cuda)
            torch.manual_seed(seed)  # dropout
            # A compiled step that fails reruns eagerly; the gradients that earlier micro-batches of
            # this update accumulated are put back first (kept only while a compiled step can fail).
            kept = saved_grads(params) if runner.compiled and t.grad_accum > 1 else None
            # An update is the micro-batches b // grad_accum of this epoch, its last batch closing
            # one of its own (as the schedule counts them): accelerate, without a dataloader to mark
            # an epoch's end, would carry the remainder into the next epoch's first update.
            accelerator.step = t.grad_accum - 1 if b + 1 == len(batches) else b % t.grad_accum
            with accelerator.accumulate(model):
                try:
                    losses, loss = _forward_backward(runner, store, inputs, config, accelerator, weights)
                except Exception as error:
                    if not runner.compiled:
                        raise
                    restore_grads(params, kept)
                    runner.fall_back(error)
                    torch.manual_seed(seed)
                    losses, loss = _forward_backward(runner, store, inputs, config, accelerator, weights)
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
            # The loss on the bar: reading it waits for the device, so at most every few seconds.
            if show and (shown is None or time.perf_counter() - shown >= LOSS_REFRESH_SECONDS):
                bar.set_postfix(loss=f"{float(sums['loss']) / sums['n']:.3f}")
                shown = time.perf_counter()
            state["batch"] = b + 1
            steps_done += 1
            if len(first_steps_s) < 3:
                first_steps_s.append(round(time.perf_counter() - step_started, 2))
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if deadline is not None and world > 1:  # every process stops at the same step (else DDP hangs)
                flag = torch.tensor([float(out_of_time)], device=device)
                out_of_time = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            # A stop waits for the end of an update: gradients half accumulated are not saved.
            stop = out_of_time or (stop_after_steps is not None and steps_done >= stop_after_steps)
            if stop and accelerator.sync_gradients:
                state["stopped_early"] = True
                if out_of_time and accelerator.is_main_process:
                    record = {"stopped": "max_train_minutes", "epoch": epoch + 1, "batch": b + 1,
                              "global_step": state["global_step"], "seconds": round(time.perf_counter() - started, 2),
                              "lr": scheduler.get_last_lr()[0], **mean_losses(sums),
                              **({} if neighbours_s is None else {"hard_negatives_s": neighbours_s})}
                    # The deadline's partial epoch is dev-evaluated too, so it can become best/.
                    record.update(_select_on_dev(core, setup, config, dev, state, out, accelerator, show,
                                                 {"epoch": epoch, "batch": b + 1}))
                    with log_path.open("a") as f:
                        f.write(json_line(record) + "\n")
                _save_last(core, config, optimizer, scheduler, state, last, accelerator, data, neighbours)
                return state
            if t.checkpoint_every and accelerator.sync_gradients and state["batch"] % t.checkpoint_every == 0:
                _save_last(core, config, optimizer, scheduler, state, last, accelerator, data, neighbours)

        record = {"epoch": epoch + 1, "global_step": state["global_step"],
                  "seconds": round(time.perf_counter() - started, 2), "lr": scheduler.get_last_lr()[0]}
        record.update(mean_losses(sums))
        if neighbours_s is not None:
            record["hard_negatives_s"] = neighbours_s
        if first_batch:  # resumed mid-epoch: the train_* means cover only the batches run since
            record["train_from_batch"] = first_batch + 1
        if runner.fallback_reason:
            record["step_mode_fallback"] = runner.fallback_reason
        if runner.compiled:
            record["compiled_graphs"] = runner.graphs()
        if epoch == first_epoch and first_steps_s:
            record["first_steps_s"] = first_steps_s
        state["epoch"], state["batch"] = epoch + 1, 0
        if accelerator.is_main_process:
            if (epoch + 1) % t.eval_every_epochs == 0 or epoch + 1 == t.epochs:
                record.update(_select_on_dev(core, setup, config, dev, state, out, accelerator, show,
                                             {"epoch": epoch + 1}))
            with log_path.open("a") as f:
                f.write(json_line(record) + "\n")
            accelerator.print(json_line(record))
        _save_last(core, config, optimizer, scheduler, state, last, accelerator, data, neighbours)
    return state


def json_line(record: dict) -> str:
    """A metrics.jsonl line: NaN and infinities (a diverged loss) as null, since bare NaN is not JSON."""
    def finite(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return json.dumps({k: finite(v) for k, v in record.items()}, allow_nan=False)


def dev_targets(setup: Setup, config: RunConfig) -> list:
    """The dev samples selection ranks: those with a target of the dev split (of its first
    train.max_eval_samples samples, as every evaluation slices it); the others have nothing to
    rank. [] without a dev split."""
    return [s for s in setup.samples.get(config.train.dev_split) or [] if s.target is not None]


def _select_on_dev(core, setup: Setup, config: RunConfig, dev: list, state: dict, out: Path, accelerator,
                   show: bool, position: dict) -> dict:
    """Dev recall (§4.1's selection score) of the model as it is now on `dev` (`dev_targets`);
    saves best/ when it beats the best so far (state["best"]). Without dev samples to rank the
    latest evaluated model is kept. Returns the dev_* fields for metrics.jsonl. `position`:
    {"epoch": epochs completed[, "batch": batches into the next one]}, as trainer_state counts them."""
    if not dev:
        state["best_epoch"] = position["epoch"]
        save_pretrained(core, config, out / "best", dict(position))
        return {}
    say(f"dev evaluation: ranking the catalog for {len(dev):,} samples", show)
    with accelerator.autocast():  # bfloat16 frozen weights need it outside training too
        scores = recall_only(core, setup.store, setup.encoder, dev, config.inference, progress=show)
    core.train()
    if scores["recall_mean"] > state["best"]:
        state["best"], state["best_epoch"] = scores["recall_mean"], position["epoch"]
        save_pretrained(core, config, out / "best", {**position, "dev": scores})
    return {f"dev_{k}": v for k, v in scores.items()}


def _forward_backward(runner: StepRunner, store: ItemStore, inputs, config: RunConfig, accelerator,
                      weights: dict[str, float] | None = None):
    with accelerator.autocast():
        losses = runner(store, inputs, config.train)
    loss = total_loss(losses if weights is None else {k: losses[k] * w for k, w in weights.items()}, config)
    accelerator.backward(loss)
    return losses, loss


def mean_losses(sums: dict) -> dict:
    """train_loss/recall/rerank/gen: the means over the batches of this stretch of training."""
    return {f"train_{k}": float(sums[k]) / max(sums["n"], 1) for k in ("loss", "recall", "rerank", "gen")}


def _save_last(core, config, optimizer, scheduler, state, last: Path, accelerator, data: dict,
               neighbours: torch.Tensor | None = None) -> None:
    """`data`: `dataset_record` of the dataset, which a resume is checked against (`check_same_data`);
    `neighbours`: the epoch's hard-negative table, so that a resumed epoch draws what it would have."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    kept = {k: v for k, v in state.items() if k != "stopped_early"}  # how this call ended, not the run's state
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": kept}
    if neighbours is not None:
        trainer["neighbours"] = neighbours
    save_pretrained(core, config, last, {"trainer": dict(kept), "data": data}, extra_files={STATE_FILE: trainer})


def _resume(core, optimizer, scheduler, last: Path) -> tuple[dict, torch.Tensor | None]:
    load_weights(core, last)
    # weights_only: resuming a run folder from elsewhere must not execute pickled code.
    trainer = torch.load(last / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    state = trainer["state"]
    state.pop("stopped_early", None)  # saved by versions before this flag was kept out of last/
    return state, trainer.get("neighbours")
