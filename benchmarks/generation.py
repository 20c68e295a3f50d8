"""Response generation speed for each decoding strategy, CPU (issue 6, item 5).

    python benchmarks/generation.py [--quick] [--strategies greedy beam ...] [--natural]

Default backbone (untrained PECRS: fresh heads, LoRA at its zero init), a few INSPIRED test contexts
(B=1, the request's target item injected as the recommendation, as `PECRS.generate` does at
inference), max_new_tokens=64, every preset of pecrs.decoding.PRESETS. By default each response is
forced to its full 64 tokens (`min_new_tokens`), so tokens/s compares the strategies on equal work;
--natural lets EOS stop early (what a user sees; lengths then differ by strategy).
tokens/s = returned new tokens / wall time of the `generate` call (prefill included; beam
strategies decode 4 hypotheses per returned token); the median over responses is reported.
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--contexts", type=int, default=None, help="contexts per strategy (default 3, quick 1)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--strategies", nargs="+", default=None)
    p.add_argument("--natural", action="store_true", help="let EOS end responses early")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import statistics

    import numpy as np
    import torch
    from pecrs.decoding import PRESETS, resolve
    from pecrs.tokens import collate

    n_ctx = args.contexts or (1 if args.quick else 3)
    strategies = args.strategies or (["greedy", "beam", "top_k_50"] if args.quick else list(PRESETS))
    cfg = C.run_config(args.backbone)
    model = C.build(cfg, stock_peft_tokens=args.stock_peft_tokens)
    model.eval()
    store = C.catalog(model, cfg, "inspired")
    vectors = torch.randn(len(store), model.hidden_size, generator=torch.Generator().manual_seed(0))
    encoded = C.inspired_encoded(model, store, cfg, "test", with_target=True)
    pick = np.linspace(0, len(encoded) - 1, n_ctx).round().astype(int)
    requests = [encoded[i] for i in pick]
    batches = [collate([e], model.tokenizer.pad_token_id, model.rec_end_id) for e in requests]

    # One untimed call so lazy initialisation does not land on the first strategy.
    b = batches[0]
    model.generate(b.context_ids, b.context_items, b.context_len, vectors, b.target, requests[0].prompt_ids,
                   "greedy", max_new_tokens=2, seed=0)
    rows = {}
    for name in strategies:
        strategy = resolve(name)
        if not args.natural:
            strategy["min_new_tokens"] = args.max_new_tokens
        secs, toks = [], []
        for i, (e, b) in enumerate(zip(requests, batches)):
            with torch.inference_mode():
                out, sec = C.timed(model.generate, b.context_ids, b.context_items, b.context_len, vectors,
                                   b.target, e.prompt_ids, strategy, args.max_new_tokens, seed=i)
            secs.append(sec)
            toks.append(len(out[0]))
        per = [t / s for t, s in zip(toks, secs)]
        rows[name] = {"seconds_per_response": C.summarize(secs), "tokens": toks,
                      # median over responses (robust to a load spike), and total tokens / total time
                      "tokens_per_s": round(statistics.median(per), 2),
                      "tokens_per_s_overall": round(sum(toks) / sum(secs), 2)}
    result = {"benchmark": "generation", "backbone": args.backbone,
              "settings": {"contexts": n_ctx, "batch_size": 1, "max_new_tokens": args.max_new_tokens,
                           "forced_full_length": not args.natural, "threads": threads,
                           "context_tokens": [len(e.context_ids) for e in requests]},
              "strategies": rows}
    C.emit(args, result, "generation tokens/s: " + ", ".join(f"{k} {v['tokens_per_s']:.1f}" for k, v in rows.items()))


if __name__ == "__main__":
    main()
