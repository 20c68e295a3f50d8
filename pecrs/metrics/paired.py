"""Two models on the same samples (`pecrs compare`): each metric's difference and its 95% interval.

A dev split is small (INSPIRED: 305 samples with a target in 99 dialogues), so a gap of a point
or two may be chance. The interval comes from a paired bootstrap over **dialogues**: the samples of
one dialogue share its context and are not independent, so each draw takes whole dialogues with
replacement (a cluster bootstrap) and recomputes both models' metric on the same draw.

Every metric here is a ratio of sums over units, so a draw is one matrix product of dialogue
counts [R, D] with per-dialogue sums [D]:

    recall@k        hits / samples with a target (dedup: of a target not mentioned before)
    F-1 of [ITEM]   2·TP / (2·TP + FP + FN), over replies: TP, FP, FN are per reply 0 or 1
    RG-1, RG-2      sum of per-reply F-measures / replies

Scales as in `pecrs.metrics`: recall as a fraction, F-1 and ROUGE ×100.
"""
from __future__ import annotations

import numpy as np


def dialogue_sums(values, dialogue_index, n_dialogues: int) -> np.ndarray:
    """[n_dialogues] sums of per-unit `values`, unit i belonging to dialogue dialogue_index[i]."""
    return np.bincount(np.asarray(dialogue_index), weights=np.asarray(values, dtype=float), minlength=n_dialogues)


def paired_ratio_bootstrap(num_a, den_a, num_b, den_b, resamples: int = 10_000, seed: int = 0,
                           scale: float = 1.0) -> dict:
    """Model A's and B's ratio of sums (scaled), A − B, its 95% percentile interval over
    `resamples` draws of the dialogues, and a two-sided bootstrap p-value for "no difference"
    (draws with a difference of exactly 0 count on both sides: conservative where ties are many).
    num_*, den_*: [D] per-dialogue sums (`dialogue_sums`). A draw whose denominator is 0 for a
    model (no unit of that metric drawn) is left out."""
    num_a, den_a, num_b, den_b = (np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b))
    n = len(num_a)
    point_a, point_b = scale * num_a.sum() / den_a.sum(), scale * num_b.sum() / den_b.sum()
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)   # [R, D]
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = scale * (counts @ num_a / (counts @ den_a) - counts @ num_b / (counts @ den_b))
    diff = diff[np.isfinite(diff)]
    low, high = np.percentile(diff, [2.5, 97.5])
    p = min(1.0, 2 * min(float(np.mean(diff <= 0)), float(np.mean(diff >= 0))))
    return {"a": float(point_a), "b": float(point_b), "difference": float(point_a - point_b),
            "ci95": [float(low), float(high)], "p": p, "draws": int(diff.size)}
