"""bfloat16 inference against float32: latency and ranking agreement on INSPIRED test contexts (issue 12).

    python benchmarks/bf16_agreement.py [--quick] [--contexts 10] [--no-merged] [--model inspired]

Prints the CPU model, its bfloat16 flags (amx_bf16, avx512_bf16) and the dtype `auto` picks
there (pecrs.precision), then per variant p50 latencies (one request = one test context, B=1,
recall only, and recall + re-rank of M_inference=700, `benchmarks/latency.py`'s method) and the
agreement of each bfloat16 variant's rankings with float32's:
  float32            the reference (what pecrs serves on CPUs without bfloat16 units)
  bfloat16           pecrs.precision.to_inference_dtype: frozen decoder linears in bfloat16 under
                     autocast, LoRA kept in float32 (what Recommender(dtype="bfloat16") runs)
  bfloat16_merged    the same with LoRA first folded into the float32 weights (--no-merged skips it)
Agreement: top-1 of the re-ranked list the same as float32's; overlap of the recall top-50 and of
the re-ranked top-50 (targets: top-1 >= 0.90, top-50 overlap >= 0.95); mean cosine of the recall
queries. The model: without --model, the default backbone (SmolLM2-135M) with seeded random heads
and a seeded non-zero LoRA (B ~ N(0, 0.02)), which measures numerical perturbation only (untrained
heads score candidates close together, so their order is fragile); with --model, a trained model
(a shipped model's name or a run/checkpoint folder), the question that matters for serving.
Catalog vectors: the model's saved vectors when they are the INSPIRED catalog's (the shipped
model), else the catalog encoded once by the float32 model (the random model's are cached under
PECRS_CACHE/bench/): the vectors a bfloat16 Recommender uses. The first --encode-items items are also encoded in bfloat16 to time catalog encoding
and compare the vectors. On a CPU without bfloat16 units bfloat16 runs on an emulated path and is
expected to be slower than float32: the figures say by how much.
"""
from __future__ import annotations

import _common as C
from pecrs.config import InferenceConfig  # plain data, no torch

TARGETS = {"top1_agreement": 0.90, "top50_overlap": 0.95}


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--contexts", type=int, default=None, help="timed test contexts (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--m-inference", type=int, default=InferenceConfig.m_inference)
    p.add_argument("--encode-items", type=int, default=None, help="items encoded in both dtypes (default 48, quick 8)")
    p.add_argument("--no-merged", action="store_true", help="skip the LoRA-merged bfloat16 variant")
    p.add_argument("--model", default=None,
                   help="a trained model: a shipped model's name (inspired) or a run/checkpoint folder "
                        "(default: random heads and LoRA on --backbone)")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import copy
    import hashlib
    import os
    import statistics

    import numpy as np
    import torch
    from pecrs.backbone import cache_dir
    from pecrs.loaders import load_items
    from pecrs.precision import cpu_bf16_units, cpu_flags, resolve_dtype, to_inference_dtype
    from pecrs.catalog import ItemStore
    from pecrs.tokens import collate

    n_ctx = args.contexts or (3 if args.quick else 10)
    n_enc = args.encode_items or (8 if args.quick else 48)
    auto = resolve_dtype("auto", "cpu")

    def encode_catalog(model, items):  # as Recommender encodes a catalog
        return ItemStore(items, model.tokenizer, m.item_fields, m.item_max_tokens, m.item_encoding).all_vectors(model)

    if args.model:
        from pecrs.pretrained import checkpoint_dir, load_pretrained
        from pecrs.prepare import saved_catalog_vectors

        checkpoint = checkpoint_dir(args.model)
        ref, cfg = load_pretrained(checkpoint)
        ref.eval()
    else:
        cfg = C.run_config(args.backbone)
        ref = C.build(cfg, seed=0).eval()
        torch.manual_seed(1)
        with torch.no_grad():  # a non-zero adapter: merged and kept LoRA differ only then
            for name, prm in ref.named_parameters():
                if "lora_B" in name:
                    prm.normal_(0, 0.02)
    m = cfg.model
    variants = {"float32": ref}
    low = copy.deepcopy(ref)
    to_inference_dtype(low, torch.bfloat16)
    variants["bfloat16"] = low
    if not args.no_merged:
        merged = copy.deepcopy(ref)
        to_inference_dtype(merged, torch.bfloat16, merge_lora=True)
        variants["bfloat16_merged"] = merged

    items = list(load_items(C.DATASETS / "inspired" / "items.jsonl").values())
    # Catalog vectors by the float32 model, cached across runs (the model is seeded, so the same).
    key = hashlib.sha256(f"{args.backbone}|seed0|lora0.02|{len(items)}|{m.item_fields}|{m.item_max_tokens}".encode()).hexdigest()[:16]
    vec_path = cache_dir() / "bench" / f"bf16_agreement_{key}.pt"
    saved = saved_catalog_vectors(checkpoint, items, ref) if args.model else None
    if saved is not None:
        vectors = saved.float()
    elif args.model:
        print(f"encoding {len(items)} items in float32", flush=True)
        vectors = encode_catalog(ref, items)
    elif vec_path.is_file():
        vectors = torch.load(vec_path, weights_only=True)
    else:
        print(f"encoding {len(items)} items in float32 once (cached at {vec_path})", flush=True)
        vectors = encode_catalog(ref, items)
        vec_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(vectors, vec_path)

    # Catalog encoding, float32 against bfloat16 (kept LoRA: the cached encoding runs the base LM).
    encoding = {}
    sample = items[:n_enc]
    enc = {}
    for name in ("float32", "bfloat16"):
        out, sec = C.timed(encode_catalog, variants[name], sample)
        enc[name] = out
        encoding[name] = {"items_per_s": round(len(sample) / sec, 2), "seconds": round(sec, 2)}
    cos = torch.nn.functional.cosine_similarity(enc["bfloat16"], enc["float32"], dim=-1)
    encoding["bfloat16_speedup"] = round(encoding["bfloat16"]["items_per_s"] / encoding["float32"]["items_per_s"], 3)
    encoding["vector_cosine_mean_min"] = [round(float(cos.mean()), 5), round(float(cos.min()), 5)]

    # Requests: a fixed spread of INSPIRED test contexts with a target.
    store = C.catalog(ref, cfg, "inspired")
    encoded = C.inspired_encoded(ref, store, cfg, "test", with_target=True)
    pick = np.linspace(0, len(encoded) - 1, n_ctx + args.warmup).round().astype(int)
    batches = [collate([encoded[i]], ref.tokenizer.pad_token_id, ref.rec_end_id) for i in pick]

    times = {name: {"recall_only": [], "recall_rerank": []} for name in variants}
    agree = {name: {"top1": [], "recall_top50": [], "rerank_top50": [], "rerank_top10": [], "query_cosine": []}
             for name in variants if name != "float32"}
    with torch.inference_mode():
        for i, b in enumerate(batches):
            inputs = (b.context_ids, b.context_items, b.context_len, vectors)
            out = {}
            for name, model in variants.items():  # interleaved: every variant sees the same load
                (recall, _), t_recall = C.timed(model.recommend, *inputs, m_inference=args.m_inference, rerank=False)
                (ranked, _), t_rerank = C.timed(model.recommend, *inputs, m_inference=args.m_inference)
                query, _ = model.context_pass(*inputs, keep_cache=False)
                out[name] = (recall[0], ranked[0], query)
                if i >= args.warmup:
                    times[name]["recall_only"].append(t_recall)
                    times[name]["recall_rerank"].append(t_rerank)
            if i < args.warmup:
                continue
            r_recall, r_ranked, r_query = out["float32"]
            for name, a in agree.items():
                recall, ranked, query = out[name]
                a["top1"].append(float(ranked[0] == r_ranked[0]))
                a["recall_top50"].append(len(set(recall[:50].tolist()) & set(r_recall[:50].tolist())) / 50)
                a["rerank_top50"].append(len(set(ranked[:50].tolist()) & set(r_ranked[:50].tolist())) / 50)
                a["rerank_top10"].append(len(set(ranked[:10].tolist()) & set(r_ranked[:10].tolist())) / 10)
                a["query_cosine"].append(float(torch.nn.functional.cosine_similarity(query, r_query).mean()))

    latency = {name: {mode: C.summarize(ts)["median"] for mode, ts in modes.items()} for name, modes in times.items()}
    agreement = {}
    for name, a in agree.items():
        row = {k: round(statistics.fmean(v), 4) for k, v in a.items()}
        row["meets_targets"] = row["top1"] >= TARGETS["top1_agreement"] and min(
            row["recall_top50"], row["rerank_top50"]) >= TARGETS["top50_overlap"]
        agreement[name] = row
    flags = cpu_flags()
    result = {"benchmark": "bf16_agreement", "backbone": m.backbone, "model": args.model,
              "cpu": C.cpu_model(), "bf16_units": cpu_bf16_units(),
              "isa_flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
                            if f in flags],
              "auto_dtype": str(auto.dtype).removeprefix("torch."), "auto_reason": auto.reason,
              "settings": {"m_inference": args.m_inference, "batch_size": 1, "threads": threads, "contexts": n_ctx,
                           "warmup": args.warmup, "catalog_items": len(items), "encode_items": n_enc,
                           "heads": f"trained ({checkpoint})" if args.model else "seeded random",
                           "lora_B": "trained" if args.model else "seeded N(0, 0.02)",
                           "catalog_vectors": "saved with the model" if saved is not None else "encoded in float32",
                           "pecrs_cache": os.environ.get("PECRS_CACHE", "~/.cache/pecrs")},
              "latency_p50_s": latency, "agreement_with_float32": agreement, "catalog_encoding": encoding,
              "targets": TARGETS}
    f32 = latency["float32"]
    parts = [f"CPU {result['cpu']} (bf16 units: {', '.join(result['bf16_units']) or 'none'}); auto -> {result['auto_dtype']}"]
    for name in variants:
        lat = latency[name]
        text = (f"{name}: recall p50 {lat['recall_only']:.3f}s ({f32['recall_only'] / lat['recall_only']:.2f}x fp32), "
                f"+rerank {lat['recall_rerank']:.3f}s ({f32['recall_rerank'] / lat['recall_rerank']:.2f}x)")
        if name in agreement:
            a = agreement[name]
            text += (f", top-1 {a['top1']:.2f}, recall top-50 {a['recall_top50']:.3f}, "
                     f"rerank top-50 {a['rerank_top50']:.3f}")
        parts.append(text)
    parts.append(f"catalog encoding bf16/fp32 speed {encoding['bfloat16_speedup']}x, "
                 f"vector cosine {encoding['vector_cosine_mean_min'][0]}")
    C.emit(args, result, "bf16_agreement: " + "; ".join(parts))


if __name__ == "__main__":
    main()
