"""Length-sorted evaluation batches against batches in sample order: ranking time, same rankings.

    python benchmarks/evaluation_batches.py [--model inspired] [--samples 64] [--batch-size 32] [--quick]

`pecrs evaluate` ranks (and scores perplexity) in batches of similar context length, shortest
first (`pecrs.tokens.length_sorted_batches`); before, batches followed the samples' order, so
each was padded to the longest of a few dialogues. This ranks the first --samples INSPIRED test
samples with a target both ways with the same model in one process: "sample order" calls
`rank_samples` once per consecutive slice of --batch-size (one batch per call, which is what the
old loop ran), "length-sorted" calls it once on all of them. It prints the seconds of each, their
ratio, the padded context tokens of each layout over the whole test split, and how many samples'
top-50 lists differ (a batch's padding changes floating-point rounding only, so expect 0 or a
swap of near-tied neighbours). The LM runs in float32 with LoRA merged, as `pecrs evaluate` on a
CPU without bfloat16 units.
"""
from __future__ import annotations

import _common as C


def padded_tokens(lengths, batches) -> int:
    return int(sum(max(lengths[i] for i in rows) * len(rows) for rows in batches))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="inspired", help="a shipped model's name or a run/checkpoint folder")
    p.add_argument("--samples", type=int, default=None, help="test samples with a target timed (default 64, quick 8)")
    p.add_argument("--batch-size", type=int, default=32, help="the shipped model's inference.batch_size")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import numpy as np
    import torch
    from pecrs.evaluate import rank_samples
    from pecrs.tokens import length_sorted_batches

    n = args.samples or (8 if args.quick else 64)
    checkpoint, model, config, setup = C.trained_model(args.model, str(C.DATASETS / "inspired"))
    test = [s for s in setup.samples["test"] if s.target is not None]
    encoded_all = setup.encoder.encode_all(test)
    encoded = encoded_all[:n]
    n = len(encoded)  # the split may hold fewer
    vectors = setup.store.all_vectors(model)
    m, bs = config.inference.m_inference, args.batch_size
    kw = dict(chunk_size=config.inference.rerank_chunk_size)

    with torch.inference_mode(), model.merged_lora():
        rank_samples(model, encoded[:2], vectors, m, bs, **kw)  # warm-up
        in_order, t_order = C.timed(lambda: np.concatenate(
            [rank_samples(model, encoded[i:i + bs], vectors, m, bs, **kw) for i in range(0, n, bs)]))
        by_length, t_sorted = C.timed(rank_samples, model, encoded, vectors, m, bs, **kw)

    lengths = [len(e.context_ids) for e in encoded_all]
    order_batches = [np.arange(i, min(i + bs, len(lengths))) for i in range(0, len(lengths), bs)]
    tokens = {"real": int(sum(lengths)), "sample_order": padded_tokens(lengths, order_batches),
              "length_sorted": padded_tokens(lengths, length_sorted_batches(lengths, bs))}
    differ = int((in_order != by_length).any(axis=1).sum())
    result = {"benchmark": "evaluation_batches", "model": str(checkpoint), "cpu": C.cpu_model(),
              "settings": {"samples": n, "batch_size": bs, "m_inference": m, "threads": threads},
              "seconds": {"sample_order": round(t_order, 2), "length_sorted": round(t_sorted, 2)},
              "speedup": round(t_order / t_sorted, 3),
              "test_targets_context_tokens": tokens, "samples_whose_top50_differ": differ}
    C.emit(args, result,
           f"evaluation_batches: CPU {result['cpu']}; ranking {n} samples: sample order {t_order:.1f}s, "
           f"length-sorted {t_sorted:.1f}s ({result['speedup']}x); test contexts with a target padded "
           f"{tokens['sample_order'] / tokens['real']:.2f}x -> {tokens['length_sorted'] / tokens['real']:.2f}x real; "
           f"top-50 lists differing: {differ}/{n}")


if __name__ == "__main__":
    main()
