"""Evaluation metrics of PECRS (paper §4.1, Tables 2, 3, 8, 9–10).

Pure functions over numpy arrays and plain Python lists; nothing here knows about models,
tokenizers or tensors. ROUGE comes from `rouge_score` (the package the paper lists), never
re-implemented.

Scales (decided once, here):

* recall@k, dedup recall, genre rates: fractions in [0, 1]. The paper prints them as
  percentages (Table 2: "R@1 4.7" means 0.047).
* ROUGE-1/2 and the [ITEM] F-1: ×100, as the paper prints them (Table 3: RG-1 36.28, F-1 86.04).
* Dist@K: the CRS-literature value (distinct n-grams per generated response, can exceed 1,
  Table 3: Dist@4 2.132). Perplexity: a plain positive number (Table 3: 9.89).
* `unique_items`: an integer count (Table 2: 463).

Which samples go where, as in the reference implementation (Ravoxsg/efficient_unified_crs,
engine.py): recall@k and Unique use every sample that has a target, including the
`repeated` samples of a multi-item turn; ROUGE, the [ITEM] F-1 and Dist@K use one entry per
response turn (samples with `repeated=False`), with or without a target.

A metric that is undefined on its input (no samples, 0/0) returns ``float("nan")``;
`summarize` turns NaN into ``None`` so its output is valid JSON.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_KS",
    "recall_at_k",
    "dedup_recall_at_k",
    "items_by_last_mention",
    "naive_baseline_ranking",
    "unique_items",
    "rouge_1_2",
    "item_f1",
    "distinct_n",
    "distinct_ratio_n",
    "perplexity",
    "genre_accuracy",
    "summarize",
]

DEFAULT_KS = (1, 10, 50)
NAN = float("nan")


# --------------------------------------------------------------------------- recommendation

def _check_ranking(ranked, targets) -> tuple[np.ndarray, np.ndarray]:
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


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _hit_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its row, or a huge sentinel when absent."""
    n, width = ranked.shape
    miss = np.iinfo(np.int64).max
    if n == 0 or width == 0:
        return np.full(n, miss, dtype=np.int64)
    match = ranked == targets[:, None]
    return np.where(match.any(axis=1), match.argmax(axis=1), miss)


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
    ranked, targets = _check_ranking(ranked, targets)
    ks = _check_ks(ks)
    ranks = _hit_ranks(ranked, targets)
    if ranks.size == 0:
        return {f"recall@{k}": NAN for k in ks}
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


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
    ranked, targets = _check_ranking(ranked, targets)
    seen = np.asarray(seen_before, dtype=bool).reshape(-1)
    if seen.shape[0] != targets.shape[0]:
        raise ValueError(f"seen_before has {seen.shape[0]} entries but targets has {targets.shape[0]}")
    keep = ~seen
    out: dict[str, float | int] = dict(recall_at_k(ranked[keep], targets[keep], ks))
    out["n"] = int(keep.sum())
    return out


def items_by_last_mention(turns) -> tuple:
    """The items mentioned in `turns`, each once, most recently mentioned first.

    `turns` is a sequence of objects with an `items` attribute (e.g. `Sample.context`, a tuple
    of `pecrs.data.Turn`); within a turn, items come in placeholder order, so a later
    placeholder is a more recent mention. An item mentioned in turns 1 and 5 ranks by turn 5.
    Use this to feed `naive_baseline_ranking(..., last_mention_order=...)` exactly.
    """
    last: dict = {}
    pos = 0
    for turn in turns:
        for item in turn.items:
            last[item] = pos
            pos += 1
    return tuple(sorted(last, key=last.__getitem__, reverse=True))


def naive_baseline_ranking(earlier_items: Sequence[Sequence], k: int = max(DEFAULT_KS), *,
                           last_mention_order: Sequence[Sequence] | None = None,
                           item_index: Mapping | None = None) -> np.ndarray:
    """Ranking of the naive baseline that recommends the items already mentioned in the dialogue.

    Row i lists the items mentioned before sample i, most recent first, truncated to k and
    padded with -1 (no recommendation) to shape (n, k). Score it with `recall_at_k`; with
    `dedup_recall_at_k` it scores 0 by construction (it can only hit seen-before targets).

    earlier_items: per sample, items in FIRST-mention order (`Sample.earlier_items`). Without
    `last_mention_order`, "most recent first" is approximated by reversing first-mention order,
    i.e. items are ordered by their first mention, latest first; an item re-mentioned late
    keeps its early position. This differs from true recency only for re-mentioned items.
    last_mention_order: optional, per sample, items already ordered most recent first by their
    LATEST mention (e.g. `items_by_last_mention(sample.context)`); used instead when given.
    item_index: optional mapping item id -> catalog index, applied when the lists hold ids
    (e.g. strings) rather than catalog indices; an id missing from it raises KeyError.
    Duplicates within a row are kept once, at their first position.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if last_mention_order is not None:
        if len(last_mention_order) != len(earlier_items):
            raise ValueError("last_mention_order and earlier_items differ in length")
        rows = [list(r) for r in last_mention_order]
    else:
        rows = [list(reversed(list(r))) for r in earlier_items]
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


# --------------------------------------------------------------------------- generation

def rouge_1_2(predictions: Sequence[str], references: Sequence[str], *,
              use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-2 F-measure over (prediction, reference) pairs, ×100.

    Each pair is scored with ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2"],
    use_stemmer=True)`` (the settings of the PECRS code), then the per-pair F-measures are
    averaged (macro average) and multiplied by 100, the scale of Tables 3, 7, 8. The default
    rouge_score tokenizer lower-cases, turns every character outside [a-z0-9] into a space
    (so "[ITEM]" becomes the word "item" and non-ASCII letters vanish), splits on whitespace,
    and with `use_stemmer` applies the Porter stemmer to tokens longer than 3 characters.
    A pair where either side has no tokens scores 0. Empty input gives NaN for both.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        return {"rouge1": NAN, "rouge2": NAN}
    from rouge_score import rouge_scorer  # imported lazily: only this metric needs it

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=use_stemmer)
    r1 = np.empty(len(predictions))
    r2 = np.empty(len(predictions))
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        s = scorer.score(ref, pred)          # score(target, prediction)
        r1[i] = s["rouge1"].fmeasure
        r2[i] = s["rouge2"].fmeasure
    return {"rouge1": 100.0 * float(r1.mean()), "rouge2": 100.0 * float(r2.mean())}


def item_f1(pred_has_item, ref_has_item) -> float:
    """Binary F-1 (×100) of "the response contains an item", generated vs ground truth.

    pred_has_item[i]: the generated response i contains the [ITEM] placeholder.
    ref_has_item[i]: ground-truth turn i recommends an item (its sample has a target).
    Positive class = "has item": F1 = 2·TP / (2·TP + FP + FN), the value of
    ``sklearn.metrics.f1_score`` used by the PECRS code, ×100 as in Table 3 (F-1 86.04).
    Pass one entry per response turn (non-repeated samples). NaN when empty or when neither
    side has any positive (0/0; sklearn would report 0.0 there).
    """
    pred = np.asarray(pred_has_item, dtype=bool).reshape(-1)
    ref = np.asarray(ref_has_item, dtype=bool).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.size} predictions but {ref.size} references")
    tp = int(np.sum(pred & ref))
    denom = 2 * tp + int(np.sum(pred & ~ref)) + int(np.sum(~pred & ref))
    if denom == 0:
        return NAN
    return 100.0 * 2 * tp / denom


def _tokens(text, tokenize: Callable[[str], list] | None):
    if isinstance(text, str):
        return tokenize(text) if tokenize is not None else text.split()
    return list(text)


def _ngrams(tokens: Sequence, n: int):
    return zip(*(tokens[i:] for i in range(n)))


def distinct_n(texts: Sequence, n: int, *, tokenize: Callable[[str], list] | None = None) -> float:
    """Dist@n as CRS papers report it: distinct n-grams in the whole corpus / number of texts.

    Dist@n = |{all n-grams of all texts}| / len(texts): the size of the SET of n-grams
    occurring anywhere in the generated responses, divided by the NUMBER OF RESPONSES (not by
    the number of n-grams). It is therefore not bounded by 1 (Table 3: Dist@4 = 2.132). This is
    `distinct_metrics` in PECRS's evaluation.py (Ravoxsg/efficient_unified_crs); §4.1 says
    the metrics follow the common practice of MESE and UniCRS (their code not checked here).

    texts: strings (split on whitespace, case and punctuation kept, as PECRS does with
    ``str.split()``; pass `tokenize` to change that) or already-tokenised sequences. PECRS
    scores its generations prefixed with the speaker tag "A: "; pass the texts in that form
    to reproduce it exactly. Texts shorter than n contribute no n-grams but do count in the
    denominator. Empty input gives NaN.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(texts) == 0:
        return NAN
    grams: set = set()
    for text in texts:
        grams.update(_ngrams(_tokens(text, tokenize), n))
    return len(grams) / len(texts)


def distinct_ratio_n(texts: Sequence, n: int, *, tokenize: Callable[[str], list] | None = None
                     ) -> float:
    """Conventional corpus-level distinct-n (Li et al., 2016): distinct n-grams / total n-grams.

    Same n-grams and tokenisation as `distinct_n`, but divided by the total number of n-gram
    occurrences over all texts, so the value lies in [0, 1]. NaN when there is no n-gram.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts: Counter = Counter()
    for text in texts:
        counts.update(_ngrams(_tokens(text, tokenize), n))
    total = sum(counts.values())
    return len(counts) / total if total else NAN


def perplexity(total_nll, total_tokens) -> float:
    """Corpus perplexity exp(Σ NLL / Σ tokens): the exponential of the mean token NLL (nats).

    total_nll: summed negative log-likelihood (natural log) of the counted tokens, a number or
    an array of per-sample sums (they are summed). total_tokens: how many tokens those NLLs
    cover, a number or an array (summed). The tokens to count are the response tokens the LM
    predicts under teacher forcing — the recommender turn, its special tokens included —
    never the context or padding; every sample's response counts once. NaN when no token.

    Note: the PECRS code logs the mean over batches of exp(batch-mean per-sentence NLL), which
    weights short responses more and is not equal to this corpus-level value.
    """
    nll = float(np.sum(total_nll))
    tokens = float(np.sum(total_tokens))
    if tokens <= 0:
        return NAN
    return math.exp(nll / tokens)


# --------------------------------------------------------------------------- genre analysis

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


# --------------------------------------------------------------------------- summary

def _json_number(x):
    if x is None:
        return None
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return None if math.isnan(x) else x


def summarize(*, ranked=None, targets=None, seen_before=None, naive_ranked=None,
              predictions: Sequence[str] | None = None, references: Sequence[str] | None = None,
              pred_has_item=None, ref_has_item=None, total_nll=None, total_tokens=None,
              n_samples: int | None = None, ks: Iterable[int] = DEFAULT_KS) -> dict:
    """Assemble the evaluation JSON dict from already-computed arrays; any part may be omitted.

    Recommendation (rows = samples with a target, as in `recall_at_k`):
      ranked (n, K), targets (n,), seen_before (n,) bool -> recall@k, dedup_recall@k, unique
      (distinct non-negative values of ranked[:, 0]); naive_ranked (n, K') from
      `naive_baseline_ranking` -> naive_recall@k, naive_dedup_recall@k.
    Generation (one entry per response turn): predictions/references -> rouge1, rouge2
      (×100); predictions -> dist2, dist3, dist4 (`distinct_n`, whitespace tokens);
      pred_has_item/ref_has_item -> f1_item (×100).
    total_nll/total_tokens -> ppl. n_samples: the number of evaluated samples, with or without
      target, as the caller counts them (reported as given; None when omitted).

    Keys, always all present: recall@k…, unique, rouge1, rouge2, f1_item, ppl, dist2, dist3,
    dist4, dedup_recall@k…, naive_recall@k…, naive_dedup_recall@k…, n_samples, n_rec_samples,
    n_dedup_samples, n_gen_samples. A metric that was not given its inputs, or is undefined
    (NaN), is None; values are plain Python numbers, ready for ``json.dumps``.
    """
    ks = _check_ks(ks)
    out: dict = {}
    rec = {f"recall@{k}": None for k in ks}
    dedup = {f"dedup_recall@{k}": None for k in ks}
    naive = {f"naive_recall@{k}": None for k in ks}
    naive_dedup = {f"naive_dedup_recall@{k}": None for k in ks}
    unique = n_rec = n_dedup = None

    if ranked is not None and targets is not None:
        ranked_a, targets_a = _check_ranking(ranked, targets)
        n_rec = int(targets_a.shape[0])
        rec = recall_at_k(ranked_a, targets_a, ks)
        unique = unique_items(ranked_a[:, 0]) if ranked_a.shape[1] else 0
        if seen_before is not None:
            d = dedup_recall_at_k(ranked_a, targets_a, seen_before, ks)
            n_dedup = d.pop("n")
            dedup = {f"dedup_{k}": v for k, v in d.items()}
        if naive_ranked is not None:
            naive = {f"naive_{k}": v for k, v in recall_at_k(naive_ranked, targets_a, ks).items()}
            if seen_before is not None:
                d = dedup_recall_at_k(naive_ranked, targets_a, seen_before, ks)
                d.pop("n")
                naive_dedup = {f"naive_dedup_{k}": v for k, v in d.items()}

    rouge = {"rouge1": None, "rouge2": None}
    dists = {"dist2": None, "dist3": None, "dist4": None}
    n_gen = None
    if predictions is not None:
        n_gen = len(predictions)
        if references is not None:
            rouge = rouge_1_2(predictions, references)
        dists = {f"dist{n}": distinct_n(predictions, n) for n in (2, 3, 4)}
    f1 = item_f1(pred_has_item, ref_has_item) \
        if pred_has_item is not None and ref_has_item is not None else None
    if n_gen is None and ref_has_item is not None:
        n_gen = int(np.asarray(ref_has_item).size)
    ppl = perplexity(total_nll, total_tokens) \
        if total_nll is not None and total_tokens is not None else None

    out.update(rec)
    out["unique"] = unique
    out.update(rouge)
    out["f1_item"] = f1
    out["ppl"] = ppl
    out.update(dists)
    out.update(dedup)
    out.update(naive)
    out.update(naive_dedup)
    out["n_samples"] = n_samples
    out["n_rec_samples"] = n_rec
    out["n_dedup_samples"] = n_dedup
    out["n_gen_samples"] = n_gen
    return {k: _json_number(v) for k, v in out.items()}
