"""Training-step speed of the two item encodings: "cached" frozen-base states vs "adapted" (issue 6).

    python benchmarks/item_encoding.py [--quick] [--backbone tiny-llama]

Same model, same synthetic max-length batch as train_step.py (batch 2, context 256, response 64,
M_train 150 shared negatives, so ~152 distinct items per step). Each timed step is forward +
backward + AdamW step via pecrs.train.training_step_losses.
  * cached:  item token states come from a per-catalog cache (computed once by the frozen base LM;
             random states of the right shape here, catalog_encoding.py times the real cache); a
             step only pools and projects them.
  * adapted: every step runs the LoRA-adapted LM (no gradient) over the texts of the ~152 items it
             touches (the paper's setting).
Only speed is measured here; which one recommends better is measured elsewhere.
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--m-train", type=int, default=150)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per mode (default 3, quick 1)")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import torch
    from pecrs.tokens import collate

    repeats = args.repeats or (1 if args.quick else 3)
    cfg = C.run_config(args.backbone, m_train=args.m_train, batch_size=2)
    model = C.build(cfg, stock_peft_tokens=args.stock_peft_tokens)
    model.train()
    store = C.fake_cached_states(C.catalog(model, cfg), model.hidden_size)
    encoded = C.synthetic_encoded(model.tokenizer, 2, len(store), 256, 64)
    batch = collate(encoded, model.tokenizer.pad_token_id, model.rec_end_id)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-5)
    times = {"cached": [], "adapted": []}
    for i in range(1 + repeats):  # first round: warm-up
        for mode in times:
            store.mode = mode
            _, sec = C.timed(C.pecrs_step, model, store, batch, cfg, optimizer, i)
            if i:
                times[mode].append(sec)
    stats = {k: C.summarize(v) for k, v in times.items()}
    ratio = stats["adapted"]["median"] / stats["cached"]["median"]
    result = {"benchmark": "item_encoding", "backbone": args.backbone,
              "settings": {"batch_size": 2, "context_tokens": 256, "response_tokens": 64, "m_train": args.m_train,
                           "threads": threads, "item_max_tokens": cfg.model.item_max_tokens},
              "seconds_per_step": stats, "adapted_over_cached": round(ratio, 2)}
    C.emit(args, result, f"item_encoding {args.backbone}: cached {stats['cached']['median']:.2f} s/step, adapted "
                         f"{stats['adapted']['median']:.2f} s/step ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
