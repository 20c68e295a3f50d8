"""What the evaluation parts measure, on a `pecrs.prepare.Setup` (model, catalog, samples).

`full_evaluation` is `pecrs.evaluate.evaluate` with the run's settings (all of §4.1: recall,
dedup recall, naive baseline, ROUGE, F-1, PPL, Dist). `rankings` ranks the catalog for every
sample with a target and keeps per-sample results (Figure 4, Tables 9–10); `recommendation`
scores such a ranking exactly as `evaluate` does (same `metrics.summarize` inputs).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import metrics
from ..config import RunConfig
from ..evaluate import constant_reply_baseline, evaluate, mentioned_indices, naive_ranking, rank_samples_at, training_replies
from ..loaders import load_dataset
from ..samples import make_samples


def test_samples(setup, config: RunConfig):
    split = config.train.test_split
    if split not in setup.samples:
        raise ValueError(f"split '{split}' not found in {config.train.dataset}; have {sorted(setup.samples)}")
    return setup.samples[split]


def full_evaluation(setup, config: RunConfig, strategy: str | None = None, generate: bool = True) -> dict:
    t = config.train
    inference = dataclasses.replace(config.inference, decoding=strategy or config.inference.decoding)
    result = evaluate(setup.model, setup.store, setup.encoder, test_samples(setup, config), inference,
                      generate=generate, max_new_tokens=config.model.response_max_tokens, seed=t.seed)
    result["examples"] = result.get("examples", [])[:5]
    result["split"] = t.test_split
    result["decoding"] = inference.decoding
    result["no_repeat_ngram"] = inference.no_repeat_ngram
    result["m_inference"] = inference.m_inference
    return result


def rankings(setup, config: RunConfig):
    """(samples with a target, ranked [n, <=50] catalog indices, targets [n], seconds), at the
    config's M_inference."""
    m = config.inference.m_inference
    samples, ranked, targets, seconds = rankings_at(setup, config, [m])
    return samples, ranked[m], targets, seconds


def rankings_at(setup, config: RunConfig, m_values):
    """`rankings` for several M_inference from one re-rank pass: ranked is {M: [n, <=50]}."""
    started = time.perf_counter()
    samples = [s for s in test_samples(setup, config) if s.target is not None]
    setup.model.eval()
    encoded = setup.encoder.encode_all(samples)
    vectors = setup.store.all_vectors(setup.model)
    exclude = mentioned_indices(samples, setup.store.items) if config.inference.exclude_mentioned else None
    ranked = rank_samples_at(setup.model, encoded, vectors, m_values, config.inference.batch_size,
                             chunk_size=config.inference.rerank_chunk_size, exclude=exclude)
    targets = np.array([e.target for e in encoded], dtype=np.int64)
    return samples, ranked, targets, time.perf_counter() - started


_RECOMMENDATION_KEYS = ("recall@", "dedup_recall@", "naive_", "unique", "n_rec_samples", "n_dedup_samples")


def recommendation(setup, samples, ranked, targets) -> dict:
    """Recall@1/10/50, Unique, dedup recall and the naive baseline, as in `evaluate`."""
    seen = np.array([s.target_seen_before for s in samples], dtype=bool)
    naive = naive_ranking(samples, setup.store.index)
    out = metrics.summarize(ranked=ranked, targets=targets, seen_before=seen, naive_ranked=naive)
    # `samples` holds only samples with a target, so n_rec_samples (not evaluate's n_samples) counts them.
    return {k: v for k, v in out.items() if k.startswith(_RECOMMENDATION_KEYS)}


def naive_baseline(config: RunConfig) -> dict:
    """The rows of Tables 2 and 3 that need no model, on the test split, same samples and scoring
    as `evaluate`. Table 2: recommend the items already mentioned in the dialogue, most recent
    first. Table 3: answer every turn with one constant reply, the training split's
    `metrics.medoid_reply` (its text under "constant_reply")."""
    started = time.perf_counter()
    bundle = load_dataset(config.train.dataset, mentions=config.train.redial_mentions)
    split = config.train.test_split
    for needed in (split, config.train.train_split):
        if needed not in bundle.splits:
            raise ValueError(f"split '{needed}' not found in {config.train.dataset}; have {sorted(bundle.splits)}")
    samples = make_samples(bundle.splits[split])
    if config.train.max_eval_samples:  # the slice `prepare` evaluates
        samples = samples[: config.train.max_eval_samples]
    n_all = len(samples)
    conversation = constant_reply_baseline(training_replies(bundle, config.train.train_split),
                                           [s.response.text for s in samples if not s.repeated], seed=config.train.seed)
    samples = [s for s in samples if s.target is not None]
    index = {item.id: i for i, item in enumerate(bundle.items.values())}  # ItemStore's order
    ranked = naive_ranking(samples, index)
    targets = np.array([index[s.target] for s in samples], dtype=np.int64)
    seen = np.array([s.target_seen_before for s in samples], dtype=bool)
    out = metrics.summarize(ranked=ranked, targets=targets, seen_before=seen)
    out = {k: v for k, v in out.items() if k.startswith(_RECOMMENDATION_KEYS) and not k.startswith("naive_")}
    return {**out, **conversation, "n_samples": n_all, "split": split, "seconds": round(time.perf_counter() - started, 2)}
