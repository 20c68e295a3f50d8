"""GPU step probe: {cudagraphs, compile, eager} x batch sizes within a time budget; the fastest working combination (issue 11 A).

Meant for a GPU machine (tools/gpu/train_inspired.sh runs it before training, to pick the step
mode and batch size); on a CPU only as a --quick smoke test:

    python benchmarks/gpu_probe.py --config configs/inspired-gpu.yaml --data .devdata/inspired
    python benchmarks/gpu_probe.py --config configs/tiny.yaml --quick --modes eager compile --compile-backend eager

Each combination runs the step exactly as `pecrs train` does (pecrs.train / pecrs.step): the
batch collated to static shapes (`tokens.static_widths`), `plan_step` on the host with fixed item
slots, pinned non-blocking copies, `StepRunner` in the combination's mode (a compiled step that
fails falls back to eager, and the reason is reported), bf16 autocast with the frozen weights
stored in bf16 (train.frozen_dtype auto), the three losses weighted by the config, fused AdamW.
A step's time covers the whole loop iteration, host work included.

Order: eager at the config's batch size first (the baseline and the fallback), then the
compiled modes, mode by mode, at the config's batch size first and then from the largest down,
then eager at the other batch sizes (a few steps each) with what is left. Each compiled combination compiles anew (static shapes: a new batch size is a new graph).
Before a combination starts, its expected cost (the last compile of that mode, else
--compile-guess-s) must fit in what is left of --budget-s; a combination still compiling when
the budget runs out is interrupted (SIGALRM) and reported as over budget. Setup (model, catalog)
is timed separately and is not part of the budget.

Choice: the combination with the most samples/s among those that ran in their own mode (a
fallback does not count); any within --prefer-smaller-within (10%) of it with a smaller batch wins
instead, since a smaller batch gives more optimiser updates per epoch.

Prints one line per combination (ms/step, samples/s, peak GPU memory, fallback and why), a
table, then the JSON (also to $OUT/gpu_probe.json when OUT is set) and a SUMMARY line.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import time

import _common as C

MODES = ("cudagraphs", "compile", "eager")


class OverBudget(Exception):
    """Raised by the SIGALRM handler: the probe's time budget ran out inside a combination."""


ALARM = {"fired": False}   # torch.compile may wrap OverBudget in its own exception type


@contextlib.contextmanager
def alarm(seconds: float | None):
    """Raise OverBudget in the main thread after `seconds` (None or <= 0: no alarm)."""
    if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        ALARM["fired"] = True
        raise OverBudget(f"time budget ran out after {seconds:.0f} s")

    ALARM["fired"] = False
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def choose(combos: list[dict], prefer_smaller_within: float) -> dict | None:
    """The fastest combination that ran in its own mode; a smaller batch within the margin wins."""
    ok = [c for c in combos if c["status"] == "ok"]
    if not ok:
        return None
    best = max(ok, key=lambda c: c["samples_per_s"])
    close = [c for c in ok if c["samples_per_s"] >= (1 - prefer_smaller_within) * best["samples_per_s"]]
    pick = min(close, key=lambda c: (c["batch_size"], -c["samples_per_s"]))
    why = "fastest" if pick is best else (f"smallest batch within {prefer_smaller_within:.0%} of the fastest "
                                         f"({best['mode']} at batch {best['batch_size']}, "
                                         f"{best['samples_per_s']} samples/s)")
    return {"mode": pick["mode"], "batch_size": pick["batch_size"], "samples_per_s": pick["samples_per_s"],
            "ms_per_step": pick["ms_per_step"], "epoch_s_estimate": pick["epoch_s_estimate"],
            "first_step_s": pick["first_step_s"], "why": why}


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    p.add_argument("--config", default=str(C.REPO / "configs" / "inspired-gpu.yaml"))
    p.add_argument("--data", default=None, help="dataset folder (train.dataset)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 16, 32, 64])
    p.add_argument("--budget-s", type=float, default=60.0, help="all combinations together (setup excluded)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of a combination (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps of a combination (default 8, quick 2)")
    p.add_argument("--max-timed-s", type=float, default=4.0, help="stop timing a combination after this (>= 2 steps)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: the config's)")
    p.add_argument("--compile-guess-s", type=float, default=20.0,
                   help="expected first-step (compile) time of a mode not compiled yet in this probe")
    p.add_argument("--prefer-smaller-within", type=float, default=0.10)
    p.add_argument("--dev-eval", action="store_true", help="also time one dev recall evaluation (train's per-epoch cost)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)

    import torch
    from accelerate import Accelerator

    from pecrs.config import RunConfig
    from pecrs.step import StepRunner, cast_frozen, item_slots, plan_step
    from pecrs.tokens import collate, static_widths
    from pecrs.prepare import prepare
    from pecrs.train import step_seed, total_loss

    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 8)
    overrides = list(args.overrides) + ([f"train.dataset={args.data}"] if args.data else [])
    cfg = RunConfig.load(args.config, overrides)
    t = cfg.train
    backend = args.compile_backend or t.compile_backend
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # ---- setup, as pecrs.train.train does it ----
    t0 = time.perf_counter()
    precision = t.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=precision)
    device = accelerator.device
    setup = prepare(cfg, device=device)
    model, store, encoder = setup.model, setup.store, setup.encoder
    encoded = encoder.encode_all(setup.samples[t.train_split])
    frozen = t.frozen_dtype if t.frozen_dtype != "auto" else ("bfloat16" if precision == "bf16" else "float32")
    if frozen == "bfloat16":
        cast_frozen(model, torch.bfloat16)
    store.to(device)
    widths = static_widths(encoder)    # the probe measures the GPU recipe: static shapes everywhere
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=cuda)
    model, optimizer = accelerator.prepare(model, optimizer)
    sync()
    setup_s = time.perf_counter() - t0
    core = accelerator.unwrap_model(model)
    pad_id, rec_end = core.tokenizer.pad_token_id, core.rec_end_id
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(step_seed(t.seed, 0, -1))).tolist()
    sizes = [bs for bs in args.batch_sizes if bs <= len(encoded)]
    print(f"probe setup {setup_s:.1f} s: {len(encoded)} train samples, device {device}, autocast {precision}, "
          f"frozen {frozen}, widths {widths}, budget {args.budget_s:.0f} s", flush=True)

    counter = {"batch": 0}

    def step(runner, bs, slots):
        """One training iteration as pecrs.train runs it (host part included)."""
        i = counter["batch"]
        counter["batch"] += 1
        start = i * bs % max(1, len(order) - bs + 1)
        host = time.perf_counter()
        batch = collate([encoded[j] for j in order[start:start + bs]], pad_id, rec_end, *widths)
        inputs = plan_step(batch, len(store), t, torch.Generator().manual_seed(step_seed(t.seed, 0, i)),
                           candidates=True, slots=slots)
        if cuda:
            inputs = inputs.pin_memory()
        inputs = inputs.to(device, non_blocking=cuda)
        host = time.perf_counter() - host
        torch.manual_seed(i)

        def forward_backward():
            with accelerator.autocast():
                losses = runner(store, inputs, t)
            loss = total_loss(losses, cfg)
            accelerator.backward(loss)

        try:
            forward_backward()
        except OverBudget:
            raise
        except Exception as error:      # what train does: fall back to eager once, say why
            if ALARM["fired"]:
                raise OverBudget("time budget ran out while compiling") from error
            if not runner.compiled:
                raise
            optimizer.zero_grad()
            runner.fall_back(error)
            forward_backward()
        optimizer.step()
        optimizer.zero_grad()
        return host

    def counters() -> dict:
        from torch._dynamo.utils import counters as dynamo

        return {"graph_breaks": sum(dynamo["graph_break"].values()),
                "cudagraph_skips": sum(v for k, v in dynamo["inductor"].items() if "cudagraph_skip" in k)}

    def run_combo(mode: str, bs: int, limit: float) -> dict:
        row = {"mode": mode, "batch_size": bs, "status": "ok", "ran_as": mode, "fell_back": False,
               "fallback_reason": None}
        slots = item_slots(encoded, bs, t, len(store))
        import torch._dynamo

        torch._dynamo.reset()                  # a fresh compile for every combination
        from torch._dynamo.utils import counters as dynamo

        dynamo.clear()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            with alarm(limit if mode != "eager" else None):
                runner = StepRunner(model, mode, backend)
                sync()
                first = time.perf_counter()
                step(runner, bs, slots)
                sync()
                row["first_step_s"] = round(time.perf_counter() - first, 3)
            # compiled and captured: the rest is bounded by the warm-up and --max-timed-s
            for _ in range(max(0, (min(warmup, 2) if mode == "eager" else warmup) - 1)):
                step(runner, bs, slots)
            sync()
            max_timed = min(args.max_timed_s, 2.5) if mode == "eager" else args.max_timed_s
            timed_start = time.perf_counter()
            host, n = 0.0, 0
            while n < steps:
                host += step(runner, bs, slots)
                n += 1
                if n >= 2 and time.perf_counter() - timed_start > max_timed:
                    break
            sync()
            elapsed = time.perf_counter() - timed_start
        except Exception as error:
            if not (isinstance(error, OverBudget) or ALARM["fired"]):
                # eager itself failed (e.g. out of memory): report, go on
                row.update(status="error", reason=f"{type(error).__name__}: {str(error).strip()[:300]}")
                optimizer.zero_grad()
                row["seconds"] = round(time.perf_counter() - started, 2)
                return row
            row.update(status="over_budget", reason=f"time budget: still running after {limit:.0f} s")
            torch._dynamo.reset()
            optimizer.zero_grad()
            row["seconds"] = round(time.perf_counter() - started, 2)
            return row
        if runner.fallback_reason:
            row.update(status="fell_back", ran_as="eager", fell_back=True, fallback_reason=runner.fallback_reason)
        s = elapsed / n
        row.update(steps=n, warmup=warmup, ms_per_step=round(1000 * s, 2), samples_per_s=round(bs / s, 1),
                   host_ms_per_step=round(1000 * host / n, 2),
                   steps_per_epoch=math.ceil(len(encoded) / bs),
                   epoch_s_estimate=round(math.ceil(len(encoded) / bs) * s, 1),
                   peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                   seconds=round(time.perf_counter() - started, 2), **counters())
        return row

    # ---- one dev evaluation (train's cost per epoch), before any compiled step can upset the device ----
    dev_eval_s = None
    if args.dev_eval and setup.samples.get(t.dev_split):
        from pecrs.evaluate import recall_only

        dev = setup.samples[t.dev_split][:16] if args.quick else setup.samples[t.dev_split]
        try:
            with accelerator.autocast():
                _, dev_eval_s = C.timed(recall_only, core, store, encoder, dev, cfg.inference,
                                        sync=sync)
            dev_eval_s = round(dev_eval_s, 2)
            print(f"probe dev evaluation ({len(dev)} samples, M_inference {cfg.inference.m_inference}): {dev_eval_s} s", flush=True)
        except Exception as error:
            print(f"probe dev evaluation failed: {type(error).__name__}: {error}", flush=True)

    # ---- the combinations ----
    # eager at the config's batch first (baseline and fallback), then the compiled modes, then
    # eager at the other batch sizes with what is left
    preferred = sorted(sizes, key=lambda bs: (bs != t.batch_size, -bs))
    eager = [("eager", bs) for bs in preferred] if "eager" in args.modes else []
    plan = eager[:1] + [(mode, bs) for mode in args.modes if mode != "eager" for bs in preferred] + eager[1:]
    model.train()
    combos, first_cost = [], {}
    probe_start = time.perf_counter()
    for mode, bs in plan:
        left = args.budget_s - (time.perf_counter() - probe_start)
        compiled_cost = max([v for k, v in first_cost.items() if k != "eager"], default=args.compile_guess_s)
        expected = first_cost.get(mode, 0.5 if mode == "eager" else compiled_cost)
        if expected > left:
            combos.append({"mode": mode, "batch_size": bs, "status": "skipped",
                           "reason": f"time budget: {max(left, 0):.1f} s left, about {expected:.1f} s needed"})
            print(f"probe {mode:>10} batch {bs:>3}: skipped ({combos[-1]['reason']})", flush=True)
            continue
        row = run_combo(mode, bs, left)
        if "first_step_s" in row or row["status"] == "over_budget":
            first_cost[mode] = max(first_cost.get(mode, 0), row.get("first_step_s", row["seconds"]))
        combos.append(row)
        if row["status"] in ("ok", "fell_back"):
            mem = f", peak {row['peak_memory_gb']} GiB" if row["peak_memory_gb"] is not None else ""
            fb = f", FELL BACK to eager: {row['fallback_reason']}" if row["fell_back"] else ""
            print(f"probe {mode:>10} batch {bs:>3}: {row['ms_per_step']:.1f} ms/step, {row['samples_per_s']} samples/s"
                  f"{mem}, first step {row['first_step_s']:.1f} s{fb}", flush=True)
        else:
            print(f"probe {mode:>10} batch {bs:>3}: {row['status']} ({row.get('reason')})", flush=True)
    probe_s = time.perf_counter() - probe_start
    torch._dynamo.reset()
    chosen = choose(combos, args.prefer_smaller_within)

    print("\n| mode | batch | status | ms/step | samples/s | peak GiB | first step s | fallback / reason |")
    print("|---|---|---|---|---|---|---|---|")
    for c in combos:
        print(f"| {c['mode']} | {c['batch_size']} | {c['status']} | {c.get('ms_per_step', '')} | "
              f"{c.get('samples_per_s', '')} | {c.get('peak_memory_gb') or ''} | {c.get('first_step_s', '')} | "
              f"{c.get('fallback_reason') or c.get('reason') or ''} |")
    print(f"chosen: {chosen['mode']} at batch {chosen['batch_size']} ({chosen['why']})" if chosen
          else "chosen: none (no combination ran in its own mode)", flush=True)

    result = {"benchmark": "gpu_probe", "config": str(args.config), "overrides": overrides, "device": str(device),
              "settings": {"modes": args.modes, "batch_sizes": args.batch_sizes, "budget_s": args.budget_s,
                           "warmup": warmup, "steps": steps, "compile_backend": backend, "static_shapes": True,
                           "widths": list(widths), "mixed_precision": precision, "frozen_dtype": frozen,
                           "m_train": t.m_train, "recall_pool": t.recall_pool, "train_samples": len(encoded),
                           "config_batch_size": t.batch_size},
              "setup_s": round(setup_s, 2), "probe_s": round(probe_s, 2), "combos": combos, "chosen": chosen,
              "dev_eval_s": dev_eval_s, "within_budget": probe_s <= args.budget_s + 5}
    if os.environ.get("OUT"):
        args.json_out = args.json_out or os.path.join(os.environ["OUT"], "gpu_probe.json")
    summary = (f"gpu_probe on {C.machine().get('gpu', 'cpu')}: {len([c for c in combos if c['status'] == 'ok'])}"
               f"/{len(combos)} combinations ran in {probe_s:.0f} s; chosen "
               + (f"{chosen['mode']} at batch {chosen['batch_size']}: {chosen['ms_per_step']:.1f} ms/step, "
                  f"{chosen['samples_per_s']} samples/s" if chosen else "none"))
    C.emit(args, result, summary)


if __name__ == "__main__":
    main()
