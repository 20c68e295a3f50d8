"""Catalog encoding throughput (items/s) and peak memory, CPU (issue 6, item 4).

    python benchmarks/catalog_encoding.py [--quick] [--full]

Default backbone, INSPIRED catalog (1,662 items; --full adds ReDial, 6,924 items; --quick encodes
the first 200 INSPIRED items). Two ways to get the catalog's item vectors (pecrs.catalog):
  * cached   (the default item_encoding): `ItemStore.cache_base_states` runs the frozen base LM
             once over every item text and keeps the token states (float16); `all_vectors` then
             only pools and projects them. This is the one-off cost before training/inference.
  * adapted: `all_vectors` with item_encoding="adapted" runs the LoRA-adapted LM over every item
             (what evaluation does per checkpoint in that mode).
  * serving: what `Recommender` does with a catalog it has no vectors for (`--modes serving`):
             `all_vectors` of a store without cached states, the frozen base LM run over
             length-sorted chunks of 64 items, no catalog-wide states held;
             `serving-catalog-order` runs the same chunks in catalog order (how serving encoded
             before 2026-11-30), for the ratio. Both print the LM's padded tokens over real ones.
Each (catalog, mode) runs in a fresh subprocess so that its peak memory is its own: peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) after the model is built and after encoding, and
the size of the kept token states.
"""
from __future__ import annotations

import json
import subprocess
import sys

import _common as C


def legacy_item_token_states(model):
    """The 'before' figure: item_token_states as it was (catalog order, every batch padded to the
    catalog's longest item, float32 states of the whole catalog concatenated, then converted)."""
    import torch

    @torch.no_grad()
    def item_token_states(input_ids, attention_mask, adapted, batch_size=64, dtype=None):
        outs = []
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start:start + batch_size].to(model.device)
            mask = attention_mask[start:start + batch_size].to(model.device)
            if adapted:
                h = model.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                with model.lm.disable_adapter():
                    h = model.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            outs.append(h)
        out = torch.cat(outs)  # the whole catalog in float32, converted only at the end
        return out if dtype is None else out.to(dtype)

    model.item_token_states = item_token_states


def child(dataset: str, mode: str, limit: int | None, threads: int | None, legacy: bool = False,
          stock_tokens: bool = False) -> dict:
    import resource
    import time

    import torch

    C.set_threads(threads)

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    cfg = C.run_config("smollm2-135m-instruct")
    cfg.model.item_encoding = "cached" if mode.startswith("serving") else mode
    model = C.build(cfg, stock_peft_tokens=stock_tokens)
    model.eval()
    if legacy:
        legacy_item_token_states(model)
    store = C.catalog(model, cfg, dataset)
    if limit:
        store.items, store.ids = store.items[:limit], store.ids[:limit]
        store.input_ids, store.attention_mask = store.input_ids[:limit], store.attention_mask[:limit]
    n = len(store)
    tokens = int(store.attention_mask.sum())
    peak_before = rss_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "cached":
            store.cache_base_states(model)
        t1 = time.perf_counter()
        if mode == "serving-catalog-order":
            chunks = torch.arange(n).split(64)
            vectors = torch.cat([store.vectors(model, rows) for rows in chunks])
        else:
            chunks = store.chunks_by_length(64)
            vectors = store.all_vectors(model)
    t2 = time.perf_counter()
    lengths = store.attention_mask.sum(1)
    out = {"dataset": dataset, "mode": mode, "legacy": legacy, "items": n, "item_tokens": tokens,
           "padded_width": int(store.input_ids.shape[1]),
           "seconds": round(t2 - t0, 2), "items_per_s": round(n / (t2 - t0), 2),
           "real_tokens_per_s": round(tokens / (t2 - t0), 1),
           "peak_rss_mb_after_model": round(peak_before), "peak_rss_mb": round(rss_mb()),
           "vectors_shape": list(vectors.shape)}
    if mode.startswith("serving"):   # each chunk runs at its longest item's length
        out["padded_over_real_tokens"] = round(sum(int(lengths[c].max()) * len(c) for c in chunks) / tokens, 3)
    if mode == "cached":
        out["cache_states_seconds"] = round(t1 - t0, 2)
        out["pool_project_seconds"] = round(t2 - t1, 3)
        out["states_mb"] = round(store.states.numel() * store.states.element_size() / 2**20)
    return out


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also the ReDial catalog")
    p.add_argument("--modes", nargs="+", default=["cached", "adapted"])
    p.add_argument("--legacy", action="store_true",
                   help="the 'before' figure: items in catalog order, padded to the longest catalog item")
    p.add_argument("--limit", type=int, default=None, help="encode only the first N items of each catalog")
    p.add_argument("--child", nargs=3, metavar=("DATASET", "MODE", "LIMIT"), help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child:
        dataset, mode, limit = args.child
        print(json.dumps(child(dataset, mode, int(limit) or None, args.threads, args.legacy,
                               args.stock_peft_tokens)))
        return
    C.set_threads(args.threads)
    datasets = ["inspired"] + (["redial"] if args.full else [])
    limit = args.limit or (200 if args.quick else 0)
    runs = []
    for dataset in datasets:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", dataset, mode, str(limit)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            cmd += ["--legacy"] * args.legacy + ["--stock-peft-tokens"] * args.stock_peft_tokens
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"child {dataset}/{mode} failed")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = {"benchmark": "catalog_encoding", "backbone": "smollm2-135m-instruct", "legacy": args.legacy,
              "runs": runs}
    summary = "; ".join(f"{r['dataset']}/{r['mode']}: {r['items']} items in {r['seconds']:.1f}s = "
                        f"{r['items_per_s']:.1f} items/s, peak RSS {r['peak_rss_mb']} MB" for r in runs)
    C.emit(args, result, "catalog_encoding " + "[legacy] " * args.legacy + summary)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
