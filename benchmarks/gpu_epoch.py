"""GPU training speed of the default backbone on INSPIRED: tokens/s, one epoch, 20 epochs (issue 6, item 6).

Meant for a GPU machine (not run on the CPU dev box except as a --quick smoke test):

    bash benchmarks/gpu_epoch.sh                     # packaging of tools/gpu/inspired.sh
    python benchmarks/gpu_epoch.py --data .devdata/inspired [--full-epoch] [--batch-sizes 2 8 32]

What it does, with the training recipe of `pecrs train configs/inspired.yaml` (bf16 autocast on
GPUs that have it, AdamW, M_train 150 shared negatives, cached item encoding):
  1. builds the model, then `pecrs.prepare.prepare`: data, and the catalog's frozen-base token states
     (timed together: `catalog_cache_s`);
  2. for each batch size: `--warmup` steps, then `--steps` timed steps over real shuffled INSPIRED
     training batches (the time includes collation and negative sampling, as in `pecrs train`);
     reports s/step, samples/s, dialogue tokens/s (context + response tokens) and sequence tokens/s
     (what the LM runs: context + M_train+1 candidates + generation segment);
  3. with --full-epoch, runs every batch of one epoch at the first batch size (stops at
     --max-epoch-seconds and extrapolates);
  4. times one dev-set recall evaluation (what `pecrs train` does after each epoch);
  5. extrapolates the 20-epoch run: catalog cache + 20 x (epoch + dev evaluation).
Target: <= 5 minutes for the whole 20-epoch run on one H100.
This measures the paper's dynamic-shape eager step (`training_step_losses`); the GPU recipe of
`pecrs train` (static shapes, frozen bf16, compiled / CUDA-graph step) is measured by
benchmarks/gpu_probe.py, which tools/gpu/train_inspired.sh runs before training.
Writes the JSON to $OUT/gpu_epoch.json as well when OUT is set.
"""
from __future__ import annotations

import dataclasses
import os

import _common as C

TARGET_RUN_S = 300


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--data", default=None, help="INSPIRED folder (default: the shared datasets)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--steps", type=int, default=None, help="timed steps per batch size (default 200, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10, quick 1)")
    p.add_argument("--full-epoch", action="store_true")
    p.add_argument("--max-epoch-seconds", type=float, default=240)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-train-samples", type=int, default=None, help="quick runs: a slice of the train split")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    import math
    import time

    import torch
    from pecrs.evaluate import recall_only
    from pecrs.tokens import collate
    from pecrs.prepare import prepare

    steps = args.steps or (3 if args.quick else 200)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else None
    bf16 = cuda and torch.cuda.is_bf16_supported()
    data = args.data or str(C.DATASETS / "inspired")

    t0 = time.perf_counter()
    cfg = C.run_config(args.backbone, dataset=data, max_train_samples=args.max_train_samples)
    model = C.build(cfg, seed=cfg.train.seed).to(device)
    build_s = time.perf_counter() - t0
    model.eval()
    # `pecrs train`'s own data and catalog setup: the data, then the catalog's frozen-base states
    setup, cache_s = C.timed(prepare, cfg, model=model, sync=sync)
    store, encoder = setup.store, setup.encoder
    encoded = encoder.encode_all(setup.samples["train"])
    dev = setup.samples.get("dev", [])
    if args.quick:
        dev = dev[:16]

    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.train.lr)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(0)).tolist()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast(
        "cpu", enabled=False))

    def step(rows, seed):
        batch = collate([encoded[i] for i in rows], model.tokenizer.pad_token_id, model.rec_end_id).to(device)
        from pecrs.train import total_loss, training_step_losses

        torch.manual_seed(seed)
        with autocast():
            losses = training_step_losses(model, store, batch, cfg, torch.Generator().manual_seed(seed))
            loss = total_loss(losses, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ctx = int(batch.context_len.sum()) + int(batch.gen_len.sum())
        seq = len(rows) * (batch.context_ids.shape[1] + cfg.train.m_train + 1 + batch.gen_ids.shape[1])
        return ctx, seq

    model.train()
    per_bs = {}
    for bs in args.batch_sizes:
        batches = [order[i:i + bs] for i in range(0, len(order) - bs + 1, bs)]
        for i in range(warmup):
            step(batches[i % len(batches)], i)
        if sync:
            sync()
        start = time.perf_counter()
        tok = seq = 0
        for i in range(steps):
            a, b = step(batches[(warmup + i) % len(batches)], warmup + i)
            tok, seq = tok + a, seq + b
        if sync:
            sync()
        el = time.perf_counter() - start
        steps_per_epoch = math.ceil(len(encoded) / bs)
        per_bs[str(bs)] = {"s_per_step": round(el / steps, 5), "samples_per_s": round(steps * bs / el, 1),
                           "dialogue_tokens_per_s": round(tok / el), "sequence_tokens_per_s": round(seq / el),
                           "steps_per_epoch": steps_per_epoch,
                           "epoch_s_extrapolated": round(steps_per_epoch * el / steps, 1)}
        if cuda:
            per_bs[str(bs)]["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    first = args.batch_sizes[0]
    epoch = None
    if args.full_epoch:
        batches = [order[i:i + first] for i in range(0, len(order), first)]
        if sync:
            sync()
        start = time.perf_counter()
        done = 0
        for i, rows in enumerate(batches):
            step(rows, 10_000 + i)
            done += 1
            if time.perf_counter() - start > args.max_epoch_seconds:
                break
        if sync:
            sync()
        el = time.perf_counter() - start
        epoch = {"batches": len(batches), "batches_run": done, "seconds": round(el, 1),
                 "epoch_s": round(el * len(batches) / done, 1), "complete": done == len(batches)}

    model.eval()
    dev_s = None
    if dev:
        _, dev_s = C.timed(recall_only, model, store, encoder, dev, dataclasses.replace(cfg.inference, batch_size=32),
                           sync=sync)
    epoch_s = epoch["epoch_s"] if epoch else per_bs[str(first)]["epoch_s_extrapolated"]
    run_s = cache_s + args.epochs * (epoch_s + (dev_s or 0))
    result = {"benchmark": "gpu_epoch", "backbone": args.backbone, "device": str(device),
              "settings": {"batch_sizes": args.batch_sizes, "m_train": cfg.train.m_train, "bf16_autocast": bf16,
                           "train_samples": len(encoded), "dev_samples": len(dev), "steps": steps, "warmup": warmup,
                           "epochs": args.epochs},
              "build_s": round(build_s, 1), "catalog_cache_s": round(cache_s, 2), "per_batch_size": per_bs,
              "full_epoch": epoch, "dev_eval_s": None if dev_s is None else round(dev_s, 2),
              "run_s_extrapolated": round(run_s, 1), "target_run_s": TARGET_RUN_S,
              "meets_target": run_s <= TARGET_RUN_S}
    if os.environ.get("OUT"):
        args.json_out = args.json_out or os.path.join(os.environ["OUT"], "gpu_epoch.json")
    C.emit(args, result, f"gpu_epoch {args.backbone} on {C.machine().get('gpu', 'cpu')}: batch {first}: "
                         f"{per_bs[str(first)]['s_per_step'] * 1000:.1f} ms/step, "
                         f"{per_bs[str(first)]['dialogue_tokens_per_s']} dialogue tokens/s; epoch {epoch_s:.0f} s; "
                         f"{args.epochs} epochs ~{run_s / 60:.1f} min (target <= {TARGET_RUN_S / 60:.0f} min)")


if __name__ == "__main__":
    main()
