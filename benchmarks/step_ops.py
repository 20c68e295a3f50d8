"""Operations per training step, by configuration: a CPU proxy for GPU kernel launches (issue 11).

    python benchmarks/step_ops.py [--backbone smollm2-135m-instruct] [--batch-size 2]

A small backbone's GPU step costs ~43 µs per launched kernel whatever its size (docs/results.md),
so the number of aten operations a step dispatches predicts its GPU time better than its FLOPs.
For one real INSPIRED batch this counts, under a TorchDispatchMode, the aten operations of
forward + backward (`pecrs.step.step_losses`, what `pecrs train` runs), and among them the casts
(`_to_copy`), the ones that launch a kernel (all but views), the LoRA dropout masks and the operations that would make the host wait for the
device (`_local_scalar_dense`, `nonzero`, ...), for:

    fp32                   float32 weights, no autocast (CPU default)
    bf16-autocast          float32 weights under bf16 autocast (casts at every op)
    bf16-frozen            frozen weights stored in bf16 under autocast (pecrs.step.cast_frozen)
    bf16-frozen-nodropout  the same with LoRA dropout 0 (model.lora_dropout=0)

Counts do not depend on the CPU; no timing is taken.
"""
from __future__ import annotations

import collections

import _common as C

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", "equal")
# Metadata-only operations: no kernel is launched for them on a GPU.
VIEW_OPS = {"t", "view", "_unsafe_view", "detach", "slice", "select", "expand", "transpose", "unsqueeze",
            "squeeze", "permute", "alias", "as_strided", "reshape", "split", "chunk", "unbind", "split_with_sizes"}


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from pecrs.step import cast_frozen, plan_step, step_losses
    from pecrs.tokens import collate
    from pecrs.train import total_loss

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.__name__.split(".")[0]] += 1
            return func(*args, **(kwargs or {}))

    results = {}
    for name, dropout, frozen_bf16, autocast in (("fp32", 0.05, False, False),
                                                 ("bf16-autocast", 0.05, False, True),
                                                 ("bf16-frozen", 0.05, True, True),
                                                 ("bf16-frozen-nodropout", 0.0, True, True)):
        cfg = C.run_config(args.backbone)
        cfg.model.lora_dropout = dropout
        model = C.build(cfg)
        store = C.fake_cached_states(C.catalog(model, cfg), model.hidden_size)  # counts do not depend on values
        encoded = C.inspired_encoded(model, store, cfg, with_target=True)
        batch = collate(encoded[: args.batch_size], model.tokenizer.pad_token_id, model.rec_end_id)
        inputs = plan_step(batch, len(store), cfg.train, torch.Generator().manual_seed(0))
        if frozen_bf16:
            cast_frozen(model, torch.bfloat16)
        model.train()
        with Count() as count, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = total_loss(step_losses(model, store, inputs, cfg.train), cfg)
            loss.backward()
        ops = count.ops
        results[name] = {"aten_ops": sum(ops.values()),
                         "kernel_ops": sum(v for k, v in ops.items() if k not in VIEW_OPS), "casts": ops["_to_copy"],
                         "dropout_masks": ops["native_dropout"] + ops["bernoulli_"],
                         "host_waits": {k: v for k, v in ops.items() if any(s in k for s in SYNC_OPS)},
                         "top": dict(ops.most_common(8))}
    out = {"benchmark": "step_ops", "backbone": args.backbone, "batch_size": args.batch_size, "results": results}
    summary = ", ".join(f"{k} {v['kernel_ops']} kernel ops ({v['casts']} casts)" for k, v in results.items())
    C.emit(args, out, f"per step, {args.backbone}, batch {args.batch_size}: {summary}")


if __name__ == "__main__":
    main()
