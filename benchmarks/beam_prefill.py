"""Beam decoding with the prompt computed once per row against transformers' copy per beam.

    python benchmarks/beam_prefill.py [--model inspired] [--samples 64] [--batch-size 32] [--quick]

The paper's decoding (top_k: beam-sample with 4 beams, Table 8) runs through transformers' beam
search, which copies each prompt 4 times and prefills every copy. `pecrs.decoding.generate` instead
prefills each prompt once (`prompt_cache_kwargs`) and repeats the KV cache for the beams. This
generates the replies of the first --samples INSPIRED dev turns (one per recommender turn, as
`pecrs evaluate` does) with the shipped model, both ways, in one process: "stock" replaces
`prompt_cache_kwargs` by `{}`, which hands transformers no cache, i.e. its own beam search.
It prints seconds per reply of each, their ratio and how many replies differ (the same seed
samples the same tokens unless float rounding flips a near-tie: expect 0). Item injected: each
turn's top-1 is fixed to catalog item 0, since ranking is not what is timed. float32, LoRA merged,
no_repeat_ngram 3, as the shipped model's `pecrs evaluate` on a CPU without bfloat16 units.
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="inspired", help="a shipped model's name or a run/checkpoint folder")
    p.add_argument("--samples", type=int, default=None, help="dev turns generated (default 64, quick 8)")
    p.add_argument("--batch-size", type=int, default=32, help="the shipped model's inference.batch_size")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import numpy as np
    import torch
    from pecrs.decoding import generation, without_repeats
    from pecrs.evaluate import generate_responses

    n = args.samples or (8 if args.quick else 64)
    checkpoint, model, config, setup = C.trained_model(args.model, str(C.DATASETS / "inspired"))
    turns = [s for s in setup.samples["dev"] if not s.repeated][:n]
    encoded = setup.encoder.encode_all(turns)
    n = len(encoded)
    vectors = setup.store.all_vectors(model)
    top1 = np.zeros(n, dtype=np.int64)
    strategy = without_repeats(config.inference.decoding, 3)
    args_ = (model, encoded, top1, vectors, args.batch_size, strategy, config.model.response_max_tokens)

    shared = generation.prompt_cache_kwargs
    with torch.inference_mode(), model.merged_lora():
        generate_responses(model, encoded[:2], top1[:2], vectors, 2, strategy, 2)  # warm-up
        ours, t_shared = C.timed(generate_responses, *args_, seed=0)
        generation.prompt_cache_kwargs = lambda *a, **k: {}
        try:
            stock, t_stock = C.timed(generate_responses, *args_, seed=0)
        finally:
            generation.prompt_cache_kwargs = shared
    differ = sum(a != b for a, b in zip(ours, stock))
    result = {"benchmark": "beam_prefill", "model": str(checkpoint), "cpu": C.cpu_model(),
              "settings": {"samples": n, "batch_size": args.batch_size, "strategy": config.inference.decoding,
                           "no_repeat_ngram": 3, "threads": threads},
              "seconds_per_reply": {"stock": round(t_stock / n, 3), "shared_prompt": round(t_shared / n, 3)},
              "speedup": round(t_stock / t_shared, 3), "replies_differing": differ}
    C.emit(args, result,
           f"beam_prefill: CPU {result['cpu']}; {n} dev replies, batch {args.batch_size}: stock {t_stock / n:.2f} s "
           f"per reply, prompt once per row {t_shared / n:.2f} s ({result['speedup']}x); replies differing: {differ}/{n}")


if __name__ == "__main__":
    main()
