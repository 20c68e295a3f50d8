"""How much harder recall's neighbours are than uniform negatives for a trained model (train.hard_negatives).

    python benchmarks/hard_negative_gap.py [--model inspired] [--dataset DIR] [--split dev]
                                           [--hard 0 30 100] [--depth 100] [--max-samples N] [--quick]
                                           [--rankings 50 100 700]

Training re-ranks a sample's target among M_train (150) negatives drawn uniformly from the catalog
(§3.6); inference re-ranks recall's top M_inference (700). For every sample with a target of the
split (a slice of whole dialogues with --max-samples), the model's recall and re-rank losses
(Eq. 4-5, float32, dropout off, re-rank logits undivided unless --rerank-temperature)
are computed with negatives planned as training plans them
(`pecrs.step.plan_step`, the same seed per batch for every setting), h of the 150 drawn from the
sample's recall neighbours (`pecrs.hard_negatives`: recall's top --depth, its turn's answers
left out), for each h of --hard. h = 0 is the paper's uniform draw; the re-rank loss's chance
level is ln(151) = 5.02. A loss that rises with h says the model tells its targets from random
items better than from the items recall hands the re-ranker at inference: the gap hard negatives
train on. A measurement of one model's losses, not of a training run.

--rankings M...: the same in end metrics, R@1/10/50 of the samples (and of those whose target
the dialogue had not mentioned: dedup) ranked in recall's order alone, and re-ranked among
recall's top M for each M (`pecrs.evaluate.rank_samples_at`, one re-rank pass at the largest M).
"""
from __future__ import annotations

import _common as C


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="inspired", help="a shipped model's name, a run or a checkpoint folder")
    p.add_argument("--dataset", default=str(C.DATASETS / "inspired"))
    p.add_argument("--split", default="dev")
    p.add_argument("--hard", type=int, nargs="*", default=[0, 30, 100],
                   help="hard negatives of the 150 (0: uniform); none: no losses")
    p.add_argument("--rankings", type=int, nargs="*", default=[], metavar="M",
                   help="also R@k in recall's order and re-ranked among recall's top M, for each M")
    p.add_argument("--depth", type=int, default=100, help="recall's top this many are a sample's neighbours")
    p.add_argument("--m-train", type=int, default=150)
    p.add_argument("--max-samples", type=int, default=None, help="samples with a target, whole dialogues (quick: 8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rerank-temperature", type=float, default=1.0,
                   help="the re-rank logits divided by this in the loss (1: as the model scores; rankings do not depend on it)")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    import copy
    import time

    import torch

    from pecrs.hard_negatives import recall_neighbours
    from pecrs.step import plan_step
    from pecrs.tokens import collate

    started = time.perf_counter()
    _, model, cfg, setup = C.trained_model(args.model, args.dataset)   # float32, the shipped item vectors
    store, limit = setup.store, args.max_samples or (8 if args.quick else None)
    samples = []
    for s in setup.samples[args.split]:   # whole dialogues: a turn's answers stay together
        if limit is not None and sum(x.target is not None for x in samples) >= limit \
                and s.dialogue_id != samples[-1].dialogue_id:
            break
        samples.append(s)
    encoded = setup.encoder.encode_all(samples)
    vectors = store.all_vectors(model)
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    neighbours = recall_neighbours(model, store, samples, encoded, args.depth, batch_size=32)
    neighbours_s = time.perf_counter() - started
    rows = [i for i, s in enumerate(samples) if s.target is not None]
    sums = {h: {"recall": 0.0, "rerank": 0.0} for h in args.hard}
    started = time.perf_counter()
    pad, rec_end = model.tokenizer.pad_token_id, model.rec_end_id
    with torch.no_grad():
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start:start + args.batch_size]
            batch = collate([encoded[i] for i in chunk], pad, rec_end)
            for h in args.hard:
                t = copy.deepcopy(cfg.train)
                t.m_train, t.recall_pool, t.hard_negatives = args.m_train, None, h
                t.share_negatives_batch = t.share_negatives_tasks = True
                plan = plan_step(batch, len(store), t, torch.Generator().manual_seed(start), candidates=True,
                                 neighbours=neighbours[chunk])
                losses = model.training_losses(plan.batch, vectors[plan.vector_items], plan.vector_row,
                                               plan.recall_negatives, plan.rerank_negatives, place=plan.place,
                                               normalize="targets", rerank_temperature=args.rerank_temperature)
                for k in ("recall", "rerank"):   # batch means over rows that all have a target
                    sums[h][k] += float(losses[k]) * len(chunk)
    losses_s = time.perf_counter() - started
    n = max(len(rows), 1)
    by_h = {str(h): {k: round(v / n, 4) for k, v in sums[h].items()} for h in args.hard}
    for h in args.hard:
        by_h[str(h)]["rerank_minus_first"] = round(by_h[str(h)]["rerank"] - by_h[str(args.hard[0])]["rerank"], 4)
    rankings, started = {}, time.perf_counter()
    if args.rankings:
        import numpy as np

        from pecrs import metrics
        from pecrs.evaluate import rank_samples, rank_samples_at

        with_target = [encoded[i] for i in rows]
        targets = np.array([e.target for e in with_target])
        seen = np.array([samples[i].target_seen_before for i in rows])
        orders = {"recall_order": rank_samples(model, with_target, vectors, 50, args.batch_size, rerank=False)}
        reranked = rank_samples_at(model, with_target, vectors, args.rankings, args.batch_size)
        orders.update({f"reranked_top_{m}": reranked[m] for m in sorted(reranked)})
        rankings = {name: {**metrics.recall_at_k(ranked, targets),
                           **{f"dedup_{k}": v for k, v in metrics.dedup_recall_at_k(ranked, targets, seen).items()}}
                    for name, ranked in orders.items()}
    rankings_s = time.perf_counter() - started
    result = {"settings": {"model": args.model, "dataset": args.dataset, "split": args.split, "samples": len(rows),
                           "depth": neighbours.shape[1], "m_train": args.m_train, "hard": args.hard,
                           "recall_temperature": cfg.model.recall_temperature,
                           "rerank_temperature": args.rerank_temperature, "threads": threads,
                           "dtype": "float32"},
              "losses": by_h, "chance_rerank": round(float(torch.log(torch.tensor(args.m_train + 1.0))), 4),
              "rankings": rankings,
              "seconds": {"load": round(load_s, 1), "neighbours": round(neighbours_s, 1), "losses": round(losses_s, 1),
                          "rankings": round(rankings_s, 1)}}
    shown = ", ".join([f"h={h}: rerank {by_h[str(h)]['rerank']:.3f} recall {by_h[str(h)]['recall']:.3f}"
                       for h in args.hard] + [f"{name} R@1/10/50 {r['recall@1']:.3f}/{r['recall@10']:.3f}/"
                                              f"{r['recall@50']:.3f}" for name, r in rankings.items()])
    C.emit(args, result, f"{C.cpu_model()}, {len(rows)} {args.split} samples, hard of {args.m_train} from "
                         f"recall's top {neighbours.shape[1]}: {shown} (chance {result['chance_rerank']:.2f})")


if __name__ == "__main__":
    main()
