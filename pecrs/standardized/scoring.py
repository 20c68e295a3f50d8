"""Scoring under the standardized protocol: R@K (micro over ground-truth mentions), SR and RDL of
one ranking of every instance, on the full collection and its dedup variant; and the naive
baseline's ranking (the movies mentioned earlier, most recent first). Fractions in [0, 1].
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import metrics
from .collection import VARIANTS, Collection

KS = (1, 10, 50)


def item_codes(collection: Collection, catalog: Sequence[str] | None = None) -> dict[str, int]:
    """Integer codes for rankings: the catalog's positions (so a model's catalog indices are
    codes as they are), then every movie mentioned in the collection but missing from the
    catalog after them (a code no model ranking can hold: such a movie is always a miss for a
    model, while the naive baseline, which needs no catalog, can still recommend it)."""
    codes = {item: i for i, item in enumerate(catalog or ())}
    for movie in collection.movies():
        codes.setdefault(movie, len(codes))
    return codes


def score(collection: Collection, ranked: np.ndarray, codes: Mapping[str, int], variant: str = "full",
          catalog: set[str] | None = None, ks: Sequence[int] = KS) -> dict:
    """The protocol's metrics of one variant for `ranked` [n_instances, K] (codes of `codes`,
    best first, -1 = empty slot; row i ranks `collection.instances[i]`).

    Returns n_instances, n_mentions, n_dialogues, recall@k (micro over mentions), sr, rdl and
    n_missing_from_catalog (ground-truth mentions whose movie is not in `catalog`; None when no
    catalog is given)."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != len(collection.instances):
        raise ValueError(f"ranked must have one row per instance ({len(collection.instances)}), "
                         f"got shape {ranked.shape}")
    rows = collection.variant(variant)
    # One entry per ground-truth mention: its instance row, movie code and reward.
    mention_row = np.array([i for i, truth in rows for _ in truth], dtype=np.int64)
    mention_code = np.array([codes[m] for _, truth in rows for m in truth], dtype=np.int64)
    convs = collection.conversations
    reward = np.array([convs[collection.instances[i].conversation].reward(m) for i, truth in rows for m in truth],
                      dtype=np.float64)
    out: dict = {"n_instances": len(rows), "n_mentions": int(mention_row.size)}
    if mention_row.size:
        recall = metrics.recall_at_k(ranked[mention_row], mention_code, ks)
        out.update({k: float(v) for k, v in recall.items()})
        top1 = ranked[mention_row, 0] if ranked.shape[1] else np.full(mention_row.size, -1)
        hit1 = top1 == mention_code                       # the top-1 is this ground-truth movie
        # Per dialogue: instances' top-1 rewards summed; success if any top-1 hit earns a reward.
        dialogue = np.array([collection.instances[i].conversation for i in mention_row], dtype=np.int64)
        used, local = np.unique(dialogue, return_inverse=True)
        total = np.bincount(local, weights=np.where(hit1, reward, 0.0), minlength=used.size)
        success = np.bincount(local, weights=(hit1 & (reward > 0)).astype(np.float64), minlength=used.size) > 0
        length = np.array([convs[c].n_messages for c in used], dtype=np.float64)
        out.update({"sr": float(success.mean()), "rdl": float((total / length).mean()),
                    "n_dialogues": int(used.size)})
    else:
        out.update({f"recall@{k}": None for k in ks})
        out.update({"sr": None, "rdl": None, "n_dialogues": 0})
    if catalog is None:
        out["n_missing_from_catalog"] = None
    else:
        out["n_missing_from_catalog"] = sum(m not in catalog for _, truth in rows for m in truth)
    return out


def score_all(collection: Collection, ranked: np.ndarray, codes: Mapping[str, int],
              catalog: Sequence[str] | None = None) -> dict:
    """{"full": score(...), "dedup": score(...)} for one ranking of every instance."""
    known = set(catalog) if catalog is not None else None
    return {v: score(collection, ranked, codes, v, known) for v in VARIANTS}


def naive_ranking(collection: Collection, codes: Mapping[str, int], k: int = max(KS)) -> np.ndarray:
    """The naive baseline's ranking [n_instances, k] in `codes`: each instance's earlier movies,
    most recently mentioned first (-1 pads)."""
    return metrics.naive_baseline_ranking([inst.earlier for inst in collection.instances], k, item_index=codes)


def evaluate_naive(collection: Collection, catalog: Sequence[str] | None = None) -> dict:
    """The naive baseline on both variants (no model; the catalog only feeds the missing count)."""
    codes = item_codes(collection, catalog)
    return score_all(collection, naive_ranking(collection, codes), codes, catalog)
