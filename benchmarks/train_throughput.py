"""Training throughput at the paper's INSPIRED settings with a GPT-2-small-shaped backbone, CPU
(issue 6, item 2).

    python benchmarks/train_throughput.py [--quick] [--synthetic]

Backbone: GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)),
randomly initialised here (no download), with the offline tiny byte-level BPE tokenizer of
pecrs.backbone; LoRA and the four special tokens exactly as `pecrs train` sets them up.
Data: real INSPIRED training samples (encoded with that tokenizer: contexts cut at 256 tokens,
responses at 64) in a seeded random order, batch 2, M_train 150 shared negatives, the INSPIRED
catalog (1,662 items) in the default "cached" item encoding. The one-off cost of caching the
catalog's token states is reported separately (`catalog_cache_seconds`, skipped with --quick,
where random states of the right shape stand in). --synthetic: batches at the maximum lengths
instead of real samples. Target: <= 4.6 s per batch of 2 (authors' code here: ~92 s; a plain LoRA
step over 2x320 tokens: ~3.1 s).
"""
from __future__ import annotations

import _common as C

TARGET_S_PER_BATCH = 4.6


def gpt2_small_pecrs(cfg):
    """A PECRS model around a randomly initialised GPT-2 small (built, not downloaded)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pecrs.backbone import build_tiny_tokenizer
    from pecrs.pretrained import from_backbone

    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                                    bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    return from_backbone(lm, tokenizer, cfg)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 12, quick 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--synthetic", action="store_true", help="max-length synthetic batches instead of INSPIRED")
    p.add_argument("--plain", action="store_true", help="also time a plain LoRA LM step on the same batches")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import statistics
    import time

    import torch
    from pecrs.tokens import collate

    steps = args.steps or (3 if args.quick else 12)
    cfg = C.run_config("gpt2-small (random init)", batch_size=2, m_train=150)
    model = gpt2_small_pecrs(cfg)
    if args.stock_peft_tokens:
        C.use_stock_peft_tokens(model)
    model.train()
    store = C.catalog(model, cfg, "inspired")
    cache_seconds = None
    if args.quick:
        C.fake_cached_states(store, model.hidden_size)
    else:
        model.eval()
        t0 = time.perf_counter()
        store.cache_base_states(model)
        cache_seconds = time.perf_counter() - t0
        model.train()
    n_batches = args.warmup + steps
    if args.synthetic:
        encoded = C.synthetic_encoded(model.tokenizer, 2 * n_batches, len(store), 256, 64)
    else:
        pool = C.inspired_encoded(model, store, cfg, "train")
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
        encoded = [pool[i] for i in order[:2 * n_batches]]
    batches = [collate(encoded[2 * i:2 * i + 2], model.tokenizer.pad_token_id, model.rec_end_id)
               for i in range(n_batches)]
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-5)
    lm_opt = torch.optim.AdamW([q for q in model.lm.parameters() if q.requires_grad], lr=3e-5)
    times, plain, tokens = [], [], []
    for i, batch in enumerate(batches):
        _, sec = C.timed(C.pecrs_step, model, store, batch, cfg, optimizer, i)
        if args.plain:
            lm_batch = C.lm_inputs(batch, model.tokenizer.pad_token_id)
            _, psec = C.timed(C.plain_lm_step, model.lm, lm_batch, lm_opt, i)
        if i >= args.warmup:
            times.append(sec)
            tokens.append(int(batch.context_len.sum() + batch.gen_len.sum()))
            if args.plain:
                plain.append(psec)
    s = C.summarize(times)
    per_batch = s["median"]
    result = {
        "benchmark": "train_throughput",
        "backbone": "GPT-2 small shape, random init (12 layers, 768 wide, 12 heads, vocab 50257)",
        "settings": {"batch_size": 2, "m_train": 150, "context_max_tokens": 256, "response_max_tokens": 64,
                     "catalog": f"inspired ({len(store)} items)", "item_encoding": "cached",
                     "data": "synthetic max-length" if args.synthetic else "INSPIRED train (tiny BPE tokenizer)",
                     "threads": threads, "steps": steps,
                     "dialogue_tokens_per_batch_median": statistics.median(tokens)},
        "seconds_per_batch": s,
        "samples_per_second": round(2 / per_batch, 3),
        "catalog_cache_seconds": None if cache_seconds is None else round(cache_seconds, 1),
        "target_seconds_per_batch": TARGET_S_PER_BATCH,
        "meets_target": per_batch <= TARGET_S_PER_BATCH,
    }
    if plain:
        result["plain_lora_lm_seconds_per_batch"] = C.summarize(plain)
    C.emit(args, result, f"train_throughput GPT-2 small (random), INSPIRED batch 2, M_train 150: "
                         f"{per_batch:.2f} s/batch, {2 / per_batch:.2f} samples/s (target <= {TARGET_S_PER_BATCH} s/batch)")


if __name__ == "__main__":
    main()
