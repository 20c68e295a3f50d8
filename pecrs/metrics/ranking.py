"""Recommendation metrics (paper §4.1, Table 2): recall@k, dedup recall, the naive baseline, Unique.

Rows are samples with a target (the caller passes only those), catalog indices best first, -1 for
an empty slot. recall@k uses every such sample, including the `repeated` samples of a multi-item
turn (as in the reference engine.py). Values are fractions in [0, 1]; Unique is a count.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_KS = (1, 10, 50)
NAN = float("nan")


def check_ranking(ranked, targets) -> tuple[np.ndarray, np.ndarray]:
    """`ranked` (n, K) and `targets` (n,) as arrays; a ValueError saying what is wrong otherwise."""
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim == 1 and ranked.size == 0:          # [] -> shape (0, 0)
        ranked = ranked.reshape(0, 0)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-D (n, K) array, got shape {ranked.shape}")
    if targets.ndim != 1:
        raise ValueError(f"targets must be a 1-D (n,) array, got shape {targets.shape}")
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} rows but targets has {targets.shape[0]}")
    if targets.size and (targets < 0).any():
        raise ValueError("targets must be catalog indices >= 0 (pass only samples with a target)")
    return ranked, targets


def check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs as a tuple of ints; a ValueError unless all are positive."""
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its row of `ranked` [n, K], -1 when it is not there."""
    if ranked.size == 0:
        return np.full(len(targets), -1, dtype=np.int64)
    match = ranked == targets[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), -1)


def recall_at_k(ranked, targets, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall@k: the share of samples whose target item is among the first k ranked items.

    ranked: int array (n, K) of catalog indices, best first, one row per sample that has a
    target (the caller passes only those); -1 marks an empty slot (padding) and never matches.
    targets: int array (n,) of the target catalog index of each row.
    ks: cut-offs. When k > K the whole row counts as the top k (a list shorter than k simply
    recommends fewer items), so recall@k == recall@K.

    Returns ``{"recall@k": fraction in [0, 1]}`` per k (the paper prints ×100; with one target
    per sample this is also HitRate@k). With n == 0 every value is NaN.
    """
    ranked, targets = check_ranking(ranked, targets)
    ks = check_ks(ks)
    ranks = target_ranks(ranked, targets)
    if ranks.size == 0:
        return {f"recall@{k}": NAN for k in ks}
    return {f"recall@{k}": float(np.mean((ranks >= 0) & (ranks < k))) for k in ks}


def dedup_recall_at_k(ranked, targets, seen_before, ks: Iterable[int] = DEFAULT_KS
                      ) -> dict[str, float | int]:
    """Recall@k restricted to samples whose target was NOT mentioned earlier in the dialogue.

    The standardised ReDial re-evaluation drops samples where the "recommended" item already
    appeared in the context (`Sample.target_seen_before`), since repeating an earlier mention
    is trivially rewarded. `seen_before` is a bool array (n,) aligned with `ranked`/`targets`
    (True = drop). The recall itself is exactly `recall_at_k` on the kept rows.

    Returns ``{"recall@k": fraction or NaN, ..., "n": number of samples kept}``. When every
    target was seen before, n == 0 and the recalls are NaN.
    """
    ranked, targets = check_ranking(ranked, targets)
    seen = np.asarray(seen_before, dtype=bool).reshape(-1)
    if seen.shape[0] != targets.shape[0]:
        raise ValueError(f"seen_before has {seen.shape[0]} entries but targets has {targets.shape[0]}")
    keep = ~seen
    out: dict[str, float | int] = dict(recall_at_k(ranked[keep], targets[keep], ks))
    out["n"] = int(keep.sum())
    return out


def items_by_last_mention(mentions) -> tuple:
    """The items mentioned, each once, most recently mentioned first.

    `mentions`: per turn (or message), the items it mentions in placeholder order, so a later
    placeholder is a more recent mention (`[t.items for t in sample.context]`; the standardized
    protocol's `Conversation.mentions`). An item mentioned in turns 1 and 5 ranks by turn 5.
    This is what `naive_baseline_ranking` ranks.
    """
    last: dict = {}
    for pos, item in enumerate(item for turn in mentions for item in turn):
        last[item] = pos
    return tuple(sorted(last, key=last.__getitem__, reverse=True))


def naive_baseline_ranking(last_mention_order: Sequence[Sequence], k: int = max(DEFAULT_KS), *,
                           item_index: Mapping | None = None) -> np.ndarray:
    """Ranking of the naive baseline that recommends the items already mentioned in the dialogue.

    Row i lists the items mentioned before sample i, most recent first, truncated to k and
    padded with -1 (no recommendation) to shape (n, k). Score it with `recall_at_k`; with
    `dedup_recall_at_k` it scores 0 by construction (it can only hit seen-before targets).

    last_mention_order: per sample, the items mentioned before it, most recent first by their
    LATEST mention (`items_by_last_mention(sample.context)`; an item named in turns 1 and 5 ranks
    by turn 5, so first-mention order reversed is not the same).
    item_index: optional mapping item id -> catalog index, applied when the lists hold ids
    (e.g. strings) rather than catalog indices; an id missing from it raises KeyError.
    Duplicates within a row are kept once, at their first position.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = [list(r) for r in last_mention_order]
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        seen: set = set()
        j = 0
        for item in row:
            if j >= k:
                break
            if item in seen:
                continue
            seen.add(item)
            idx = item_index[item] if item_index is not None else item
            out[i, j] = int(idx)
            j += 1
    return out


def unique_items(top1_predictions) -> int:
    """§4.1 Unique: the number of distinct items predicted at rank 1 over the test set.

    `top1_predictions` holds one catalog index per evaluated sample (PECRS: every sample with a
    target); negative values (-1 = no prediction) are ignored, as the reference code discounts
    its -1 placeholder. Empty input gives 0.
    """
    preds = np.asarray(top1_predictions).reshape(-1)
    if preds.size == 0:
        return 0
    return int(np.unique(preds[preds >= 0]).size)
