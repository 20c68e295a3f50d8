"""A PECRS training step vs a plain LoRA language-model step over the same tokens (issue 6, item 1).

    python benchmarks/train_step.py [--quick] [--backbone tiny-llama]

Same model object (same backbone, same LoRA + special-token rows), same batch: B rows of a
`context`-token context + [REC] and a `response`-token response (synthetic ids at the paper's
maximum lengths, item slots in the context, a target per row). Each timed step is forward +
backward + AdamW step.
  * PECRS: pecrs.train.training_step_losses (M_train shared negatives, cached item states, the one
    masked forward over [context | M_train+1 candidates | generation segment]), as `pecrs train` runs it.
  * plain LoRA LM: `lm(input_ids, attention_mask, labels)` over context + generation segment
    (labels on the response), i.e. what a LoRA fine-tuning script does; also reported: the "lean"
    variant that computes the LM head on the response positions only (`logits_to_keep`).
The steps are interleaved (PECRS, plain, lean, PECRS, ...) so load changes hit all of them alike;
the ratio is of medians. Target: PECRS / plain <= 1.5.
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--response", type=int, default=64)
    p.add_argument("--m-train", type=int, default=150)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 7, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import torch
    from pecrs.tokens import collate

    repeats = args.repeats or (3 if args.quick else 7)
    cfg = C.run_config(args.backbone, m_train=args.m_train, batch_size=args.batch_size)
    model = C.build(cfg, stock_peft_tokens=args.stock_peft_tokens)
    model.train()
    store = C.fake_cached_states(C.catalog(model, cfg), model.hidden_size)
    encoded = C.synthetic_encoded(model.tokenizer, args.batch_size, len(store), args.context, args.response)
    batch = collate(encoded, model.tokenizer.pad_token_id, model.rec_end_id)
    lm_batch = C.lm_inputs(batch, model.tokenizer.pad_token_id)

    pecrs_opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-5)
    lm_opt = torch.optim.AdamW([q for q in model.lm.parameters() if q.requires_grad], lr=3e-5)
    variants = {
        "pecrs": lambda s: C.pecrs_step(model, store, batch, cfg, pecrs_opt, seed=s),
        "plain_lora_lm": lambda s: C.plain_lm_step(model.lm, lm_batch, lm_opt, seed=s),
        "plain_lora_lm_lean_head": lambda s: C.plain_lm_step(model.lm, lm_batch, lm_opt, seed=s,
                                                             response_logits_only=True),
    }
    times = {k: [] for k in variants}
    for i in range(args.warmup + repeats):
        for name, step in variants.items():
            _, sec = C.timed(step, i)
            if i >= args.warmup:
                times[name].append(sec)
    stats = {k: C.summarize(v) for k, v in times.items()}
    ratio = stats["pecrs"]["median"] / stats["plain_lora_lm"]["median"]
    ratio_lean = stats["pecrs"]["median"] / stats["plain_lora_lm_lean_head"]["median"]
    C_ = model.config
    result = {
        "benchmark": "train_step",
        "backbone": args.backbone,
        "settings": {"batch_size": args.batch_size, "context_tokens": args.context,
                     "response_tokens": args.response, "m_train": args.m_train, "threads": threads,
                     "item_encoding": "cached (random states of the right shape)",
                     "pecrs_tokens_per_row": batch.context_ids.shape[1] + args.m_train + 1 + batch.gen_ids.shape[1],
                     "plain_tokens_per_row": lm_batch["input_ids"].shape[1],
                     "pooling": C_.item_pooling},
        "seconds_per_step": stats,
        "ratio_pecrs_over_plain": round(ratio, 3),
        "ratio_pecrs_over_plain_lean_head": round(ratio_lean, 3),
        "target_ratio": 1.5,
        "meets_target": ratio <= 1.5,
    }
    C.emit(args, result, f"train_step {args.backbone}: PECRS {stats['pecrs']['median']:.3f}s vs plain LoRA LM "
                         f"{stats['plain_lora_lm']['median']:.3f}s per step -> ratio {ratio:.2f} (target <= 1.5; "
                         f"vs lean-head LM {ratio_lean:.2f})")


if __name__ == "__main__":
    main()
