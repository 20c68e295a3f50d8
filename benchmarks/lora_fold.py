"""LoRA folded into the weights for a call (`PECRS.merged_lora`) against kept apart, in serving, CPU.

    python benchmarks/lora_fold.py [--model inspired] [--catalog items.jsonl] [--dtype auto] [--contexts 24] [--quick]

One `Recommender` (the shipped model by default, in `--dtype`: auto is bfloat16 on a CPU with
bfloat16 units) answers the same requests both ways, interleaved (the order alternates each
round): `respond` (top_k, seed 0, titles linked), timed per generated token, and `recommend`
(k=10, folded around the call in the "folded" way), timed per call; "kept" replaces
`merged_lora` by a no-op. Then the re-ranked top 50 of both ways (folded as `evaluate` ranks) on
the first `--contexts` INSPIRED test contexts with a target, against a float32 Recommender's: top-1
agreement and top-50 overlap. `Recommender.respond` folds (decoding runs many steps), `recommend`
does not (folding and restoring cost more than one ranking pass saves: the recommend ratio).
"""
from __future__ import annotations

import _common as C

MESSAGES = ["Hi! I love scary movies like The Conjuring. What should I watch?", "Something like a comedy movie please",
            "I want an animated film for my kids", "Any good crime thrillers?", "I loved Alien. Anything like it?",
            "Looking for a romantic drama tonight"]


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="inspired")
    p.add_argument("--catalog", default=None, help="items.jsonl (default: the model's own; INSPIRED's for the test contexts)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--contexts", type=int, default=None, help="test contexts compared (default 24, quick 4)")
    p.add_argument("--rounds", type=int, default=None, help="rounds over the 6 messages (default 2, quick 1)")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import contextlib
    import time

    from pecrs.loaders import load_dataset
    from pecrs.recommender import Recommender
    from pecrs.samples import make_samples

    rec = Recommender.from_pretrained(args.model, catalog=args.catalog, dtype=args.dtype)
    reference = Recommender.from_pretrained(args.model, catalog=args.catalog, dtype="float32")
    folded = rec.model.merged_lora
    ways = {"folded": folded, "kept": contextlib.nullcontext}
    per_token = {w: [] for w in ways}
    per_recommend = {w: [] for w in ways}
    messages = MESSAGES[:2] if args.quick else MESSAGES
    for r in range(args.rounds or (1 if args.quick else 2)):
        for text in messages:
            turns = [{"role": "seeker", "text": text}]
            for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                rec.model.merged_lora = ways[way]
                started = time.perf_counter()
                reply = rec.respond(turns, seed=0, link_titles=True)
                tokens = len(rec.model.tokenizer(reply.raw_text)["input_ids"]) + 1   # + the end of turn
                per_token[way].append((time.perf_counter() - started) / tokens)
                started = time.perf_counter()
                with ways[way]():             # recommend keeps LoRA apart: folded around it here
                    rec.recommend(turns, k=10, link_titles=True)
                per_recommend[way].append(time.perf_counter() - started)
    n = args.contexts or (4 if args.quick else 24)
    test = load_dataset(C.DATASETS / "inspired").splits["test"]
    samples = [s for s in make_samples(test) if s.target is not None][:n]
    agreement = {w: {"top1": 0, "top50_overlap": 0.0} for w in ways}
    for s in samples:
        turns = [{"role": t.role, "text": t.text, "items": list(t.items)} for t in s.context]
        ref = [x.item.id for x in reference.recommend(turns, k=50)]
        for way in ways:
            rec.model.merged_lora = ways[way]
            with ways[way]():                 # ranked as evaluation ranks: folded for the whole pass
                got = [x.item.id for x in rec.recommend(turns, k=50)]
            agreement[way]["top1"] += got[0] == ref[0]
            agreement[way]["top50_overlap"] += len(set(got) & set(ref)) / 50
    rec.model.merged_lora = folded
    for way in ways:
        agreement[way] = {"top1": round(agreement[way]["top1"] / n, 3),
                          "top50_overlap": round(agreement[way]["top50_overlap"] / n, 3)}
    reply = {w: C.summarize(v) for w, v in per_token.items()}
    ranking = {w: C.summarize(v) for w, v in per_recommend.items()}
    speedup = reply["kept"]["median"] / reply["folded"]["median"]
    ranking_ratio = ranking["kept"]["median"] / ranking["folded"]["median"]
    result = {"settings": {"model": args.model, "dtype": rec.precision.name, "threads": threads,
                           "messages": len(messages), "contexts": n},
              "reply_s_per_token": reply, "recommend_s": ranking, "reply_speedup_folded": round(speedup, 2),
              "recommend_speedup_folded": round(ranking_ratio, 2), "agreement_with_float32": agreement}
    C.emit(args, result, f"{C.cpu_model()}, {rec.precision.name}: reply {reply['kept']['median']:.3f} -> "
                         f"{reply['folded']['median']:.3f} s/token folded ({speedup:.2f}x); recommend "
                         f"{ranking_ratio:.2f}x folded; top-1/top-50 vs float32: folded {agreement['folded']}, "
                         f"kept {agreement['kept']}")


if __name__ == "__main__":
    main()
