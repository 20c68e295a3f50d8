"""Recommendation latency on CPU: recall only, and recall + re-rank (issue 6, item 3).

    python benchmarks/latency.py [--quick] [--catalogs inspired redial]

One request = one INSPIRED test context (B=1) through `PECRS.recommend`: the context pass (LM over
the context, recall query at [REC]), exact search over the catalog vectors, and with re-ranking the
top M_inference=700 candidates scored against the cached context (`rerank_with_cache`).
Catalog vectors are computed once per catalog and checkpoint, offline (catalog_encoding.py times
that), so they are an input here: random vectors of the right shape by default (the cost of a
request does not depend on their values), or --real-vectors to encode the catalog first.
The model is untrained (fresh heads), which changes no cost. On the ReDial catalog, the INSPIRED
contexts' item slots are mapped onto ReDial rows (index modulo catalog size): same cost.
Reported per catalog and mode: p50 / p95 seconds over the requests, plus a breakdown of the
recall+rerank path (context pass, search, re-rank). Targets: p50 <= 0.3 s recall only,
p50 <= 1.0 s recall + rerank.
--dtype (default auto, as `Recommender.from_pretrained`): the precision the model runs in
(pecrs.precision: bfloat16 where the CPU has AMX / AVX512-BF16, else float32); the result names
the CPU, its bfloat16 flags and the dtype chosen. bfloat16 against float32 with ranking agreement:
benchmarks/bf16_agreement.py.
"""
from __future__ import annotations

import _common as C
from pecrs.config import InferenceConfig  # plain data, no torch

TARGETS = {"recall_only": 0.3, "recall_rerank": 1.0}


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--catalogs", nargs="+", default=["inspired", "redial"])
    p.add_argument("--m-inference", type=int, default=InferenceConfig.m_inference)
    p.add_argument("--requests", type=int, default=None, help="timed requests per mode (default 30, quick 6)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None, help="rerank chunk size (default: the library's)")
    p.add_argument("--real-vectors", action="store_true", help="encode the catalog instead of random vectors")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="precision of the LM (pecrs.precision; default auto, as the library)")
    p.add_argument("--int8", action="store_true",
                   help="experiment, not a library feature: dynamic int8 quantisation of the decoder's linear "
                        "layers (torch.ao quantize_dynamic, LoRA and LM head left in float32); also reports how "
                        "often the ranking agrees with float32")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import numpy as np
    import torch
    from pecrs.tokens import collate

    n_req = args.requests or (6 if args.quick else 30)
    cfg = C.run_config(args.backbone)
    model = C.build(cfg, stock_peft_tokens=args.stock_peft_tokens)
    model.eval()
    from pecrs.precision import cpu_bf16_units, resolve_dtype, to_inference_dtype

    if args.int8 and args.dtype == "bfloat16":
        p.error("--int8 quantises the float32 model: it takes --dtype float32 (auto means float32 with it)")
    precision = resolve_dtype("float32" if args.int8 else args.dtype, "cpu")
    chunk = args.chunk_size or InferenceConfig.rerank_chunk_size
    reference = None
    if args.int8:
        import copy

        reference = copy.deepcopy(model)
        quantize_int8(model)
    to_inference_dtype(model, precision.dtype)

    base_store = C.catalog(model, cfg, "inspired")
    encoded = C.inspired_encoded(model, base_store, cfg, "test", with_target=True)
    # A fixed spread of requests over the test split (not only the first dialogue).
    pick = np.linspace(0, len(encoded) - 1, n_req + args.warmup).round().astype(int)
    requests = [encoded[i] for i in pick]
    ctx_lens = [len(e.context_ids) for e in requests[args.warmup:]]

    result = {"benchmark": "latency", "backbone": args.backbone, "cpu": C.cpu_model(),
              "bf16_units": cpu_bf16_units(), "dtype": str(precision.dtype).removeprefix("torch."),
              "dtype_reason": precision.reason,
              "settings": {"m_inference": args.m_inference, "batch_size": 1, "rerank_chunk_size": chunk,
                           "threads": threads, "requests": n_req, "warmup": args.warmup,
                           "catalog_vectors": "encoded" if args.real_vectors else "random (precomputed input)",
                           "int8_experiment": args.int8,
                           "context_tokens": {"median": float(np.median(ctx_lens)), "max": max(ctx_lens),
                                              "min": min(ctx_lens)}},
              "catalogs": {}, "targets_p50_s": TARGETS}
    summary = []
    for name in args.catalogs:
        store = base_store if name == "inspired" else C.catalog(model, cfg, name)
        N = len(store)
        if args.real_vectors:
            store.cache_base_states(model)
            vectors = store.all_vectors(model)
        else:
            vectors = torch.randn(N, model.hidden_size, generator=torch.Generator().manual_seed(0))
        batches = []
        for e in requests:
            b = collate([e], model.tokenizer.pad_token_id, model.rec_end_id)
            b.context_items = torch.where(b.context_items >= 0, b.context_items % N, b.context_items)
            batches.append(b)

        def request(b, rerank):
            with torch.inference_mode():
                return model.recommend(b.context_ids, b.context_items, b.context_len, vectors,
                                       m_inference=args.m_inference, rerank=rerank, chunk_size=chunk)

        entry = {"items": N}
        for mode, rerank in (("recall_only", False), ("recall_rerank", True)):
            times = []
            for i, b in enumerate(batches):
                _, sec = C.timed(request, b, rerank)
                if i >= args.warmup:
                    times.append(sec)
            s = C.summarize(times)
            entry[mode] = {"p50": s["median"], "p95": s["p95"], "mean": s["mean"], "min": s["min"],
                           "meets_target": s["median"] <= TARGETS[mode]}
        entry["breakdown_median_s"] = _breakdown(model, batches[args.warmup:], vectors, args.m_inference, chunk)
        if reference is not None:
            entry["int8_agreement_with_float32"] = _agreement(model, reference, batches[args.warmup:], vectors,
                                                              args.m_inference, chunk)
        result["catalogs"][name] = entry
        summary.append(f"{name} ({N} items): recall p50 {entry['recall_only']['p50']:.3f}s "
                       f"p95 {entry['recall_only']['p95']:.3f}s; +rerank p50 {entry['recall_rerank']['p50']:.3f}s "
                       f"p95 {entry['recall_rerank']['p95']:.3f}s")
    C.emit(args, result, "latency" + " [int8 experiment]" * args.int8 + f" [{result['dtype']}; CPU {result['cpu']}, "
           f"bf16 units: {', '.join(result['bf16_units']) or 'none'}] (targets p50 <= 0.3 s / 1.0 s): "
           + "; ".join(summary))


def quantize_int8(model) -> None:
    """Dynamic int8 (fbgemm) for the decoder's frozen linear layers, in place."""
    import warnings

    import torch
    from torch import nn

    names = {n for n, m in model.decoder.named_modules() if isinstance(m, nn.Linear) and "lora_" not in n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model.decoder, qconfig_spec=names, dtype=torch.qint8, inplace=True)


def _agreement(model, reference, batches, vectors, m_inference, chunk):
    """Top-1 agreement and top-10 overlap of the recall+rerank ranking, int8 vs float32 (untrained
    heads: a measure of numerical perturbation, not of recommendation quality)."""
    import torch

    top1, overlap10, recall50, cosine = [], [], [], []
    with torch.inference_mode():
        for b in batches:
            args = (b.context_ids, b.context_items, b.context_len, vectors)
            qa, _ = model.context_pass(*args)
            qr, _ = reference.context_pass(*args)
            cosine.append(float(torch.nn.functional.cosine_similarity(qa, qr).mean()))
            a, _ = model.recommend(*args, m_inference=m_inference, chunk_size=chunk)
            r, _ = reference.recommend(*args, m_inference=m_inference, chunk_size=chunk)
            ra, _ = model.recommend(*args, m_inference=m_inference, rerank=False)
            rr, _ = reference.recommend(*args, m_inference=m_inference, rerank=False)
            top1.append(float(a[0, 0] == r[0, 0]))
            overlap10.append(len(set(a[0, :10].tolist()) & set(r[0, :10].tolist())) / 10)
            recall50.append(len(set(ra[0, :50].tolist()) & set(rr[0, :50].tolist())) / 50)
    n = max(len(top1), 1)
    return {"recall_query_cosine": round(sum(cosine) / n, 5), "rerank_top1_same": round(sum(top1) / n, 3), "rerank_top10_overlap": round(sum(overlap10) / n, 3),
            "recall_top50_overlap": round(sum(recall50) / n, 3)}


def _breakdown(model, batches, vectors, m_inference, chunk):
    """Median seconds of each stage of recommend(): context pass, exact search, re-rank; and the
    re-rank once more through the stock masked attention (pecrs.attention.use_stock_attention),
    interleaved request by request so that both see the same machine load."""
    import statistics
    import time

    import torch
    from pecrs.attention import use_candidate_attention, use_stock_attention
    from pecrs.retrieval import ExactIndex

    index = ExactIndex(vectors, model.config.recall_temperature)   # built once, as a Recommender does
    parts = {"context_pass": [], "search": [], "rerank": [], "rerank_stock_attention": []}
    with torch.inference_mode():
        for b in batches:
            t0 = time.perf_counter()
            q, cache = model.context_pass(b.context_ids, b.context_items, b.context_len, vectors)
            t1 = time.perf_counter()
            _, top = index.search(q, m_inference)
            t2 = time.perf_counter()
            model.rerank_with_cache(cache, b.context_len, b.context_ids.shape[1], vectors[top], chunk)
            t3 = time.perf_counter()
            use_stock_attention(model.causal_lm)
            model.rerank_with_cache(cache, b.context_len, b.context_ids.shape[1], vectors[top], chunk)
            t4 = time.perf_counter()
            use_candidate_attention(model.causal_lm)
            parts["context_pass"].append(t1 - t0)
            parts["search"].append(t2 - t1)
            parts["rerank"].append(t3 - t2)
            parts["rerank_stock_attention"].append(t4 - t3)
    out = {k: round(statistics.median(v), 4) for k, v in parts.items()}
    out["rerank_speedup_from_candidate_attention"] = round(out["rerank_stock_attention"] / out["rerank"], 3)
    return out


if __name__ == "__main__":
    main()
