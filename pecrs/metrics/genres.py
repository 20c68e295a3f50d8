"""Genre analysis of top-1 recommendations (paper Appendix B, Tables 9–10)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from .summary import _json_number

NAN = float("nan")


def genre_accuracy(pred_genres: Sequence[Sequence[str]], target_genres: Sequence[Sequence[str]],
                   top1_correct, catalog_genres: Sequence[Sequence[str]], *,
                   match: str = "first") -> dict:
    """Genre analysis of top-1 recommendations (Appendix B, Tables 9–10).

    Every item's category is its FIRST genre tag (as the paper partitions the catalog).
    pred_genres[i] / target_genres[i]: genre tuples of sample i's top-1 prediction and of its
    target. top1_correct[i]: the top-1 prediction is the target. catalog_genres: the genre
    tuple of every catalog item (each item once).

    A prediction has the correct genre when, with ``match="first"`` (default), its first genre
    equals the target's first genre, or with ``match="any"``, the target's first genre is among
    the prediction's genres. "first" is the default because it reproduces the paper's random
    baseline: on Table 9, Σ_g items%·test% = 16.6% vs the reported 16.26%, while "any" would
    give a larger one (it matches a superset).

    Returns fractions in [0, 1] (the paper prints ×100):
      per_genre: {genre: {"items_share": share of catalog items with that first genre,
                          "test_share": share of evaluated samples whose target has it,
                          "n": those samples, "accuracy": share of them whose prediction has
                          the correct genre (NaN when n == 0)}}, sorted by items_share desc.
      accuracy: genre accuracy over all evaluated samples.
      wrong_genre_rate: among samples whose top-1 is wrong, the share with the correct genre.
      random_genre_rate: that rate expected from a uniformly random wrong prediction: for each
          evaluated sample, (items matching its target genre - 1) / (catalog size - 1) — the
          draw excludes the target itself, which is assumed to be in the catalog — averaged
          over the evaluated samples (a random recommender is wrong on nearly all of them).
      n_samples, n_wrong, n_skipped (samples whose target has no genre, left out everywhere).
    """
    if match not in ("first", "any"):
        raise ValueError(f"match must be 'first' or 'any', got {match!r}")
    correct = np.asarray(top1_correct, dtype=bool).reshape(-1)
    if not (len(pred_genres) == len(target_genres) == correct.size):
        raise ValueError("pred_genres, target_genres and top1_correct differ in length")

    n_catalog = len(catalog_genres)
    first_counts = Counter(g[0] for g in catalog_genres if len(g))
    if match == "first":
        match_counts = first_counts
    else:
        match_counts = Counter(x for g in catalog_genres for x in set(g))

    def ok(pred: Sequence[str], genre: str) -> bool:
        if not len(pred):
            return False
        return pred[0] == genre if match == "first" else genre in pred

    genres, hits, wrong_mask, rand = [], [], [], []
    n_skipped = 0
    for pred, tgt, corr in zip(pred_genres, target_genres, correct):
        if not len(tgt):
            n_skipped += 1
            continue
        g = tgt[0]
        genres.append(g)
        hits.append(ok(pred, g))
        wrong_mask.append(not corr)
        rand.append(max(match_counts.get(g, 0) - 1, 0) / (n_catalog - 1) if n_catalog > 1 else NAN)
    hits_a = np.asarray(hits, dtype=bool)
    wrong_a = np.asarray(wrong_mask, dtype=bool)
    n = len(genres)

    per_genre: dict[str, dict] = {}
    sample_counts = Counter(genres)
    hit_counts = Counter(g for g, h in zip(genres, hits) if h)
    for g in sorted(set(first_counts) | set(sample_counts),
                    key=lambda x: (-first_counts.get(x, 0), x)):
        ng = sample_counts.get(g, 0)
        per_genre[g] = {
            "items_share": first_counts.get(g, 0) / n_catalog if n_catalog else NAN,
            "test_share": ng / n if n else NAN,
            "n": ng,
            "accuracy": hit_counts.get(g, 0) / ng if ng else NAN,
        }
    return {
        "per_genre": per_genre,
        "accuracy": float(hits_a.mean()) if n else NAN,
        "wrong_genre_rate": float(hits_a[wrong_a].mean()) if wrong_a.any() else NAN,
        "random_genre_rate": float(np.mean(rand)) if n else NAN,
        "n_samples": n,
        "n_wrong": int(wrong_a.sum()),
        "n_skipped": n_skipped,
    }


def top1_genre_accuracy(top1, targets, catalog_genres: Sequence[Sequence[str]]) -> dict:
    """`genre_accuracy` for catalog indices, as `pecrs evaluate` and the table9_10 experiment report
    it: top1 [n] the top-1 recommendation of each sample with a target (-1: none), targets [n],
    catalog_genres[i] the genres of item i. NaN (a genre with no test sample) becomes None, so
    the dict is JSON-ready."""
    top1, targets = np.asarray(top1).reshape(-1), np.asarray(targets).reshape(-1)
    result = genre_accuracy([catalog_genres[i] if i >= 0 else () for i in top1],
                            [catalog_genres[t] for t in targets], top1 == targets, catalog_genres)
    return _nan_to_none(result)


def _nan_to_none(value):
    # Numbers as `summarize` writes them (NaN -> None, numpy -> Python), nested dicts kept.
    return {k: _nan_to_none(v) for k, v in value.items()} if isinstance(value, dict) else _json_number(value)
