"""Generation metrics (paper §4.1, Tables 3, 7, 8): ROUGE-1/2, the [ITEM] F-1, Dist@n, perplexity.

Pass one entry per response turn (samples with `repeated=False`), with or without a target, as
the reference engine.py does. ROUGE and the F-1 are ×100, as the paper prints them; Dist@n is
the CRS-literature value (it can exceed 1); perplexity is a plain positive number.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

NAN = float("nan")


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
    if len(predictions) == 0:
        if len(references):
            raise ValueError(f"0 predictions but {len(references)} references")
        return {"rouge1": NAN, "rouge2": NAN}
    r1, r2 = rouge_pairs(predictions, references, use_stemmer=use_stemmer)
    return {"rouge1": 100.0 * float(r1.mean()), "rouge2": 100.0 * float(r2.mean())}


def rouge_pairs(predictions: Sequence[str], references: Sequence[str], *,
                use_stemmer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair ROUGE-1 and ROUGE-2 F-measures in [0, 1] (`rouge_1_2` averages them; a paired
    comparison resamples them)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    from rouge_score import rouge_scorer  # imported lazily: only this metric needs it

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=use_stemmer)
    r1 = np.empty(len(predictions))
    r2 = np.empty(len(predictions))
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        s = scorer.score(ref, pred)          # score(target, prediction)
        r1[i] = s["rouge1"].fmeasure
        r2[i] = s["rouge2"].fmeasure
    return r1, r2


def item_f1(pred_has_item, ref_has_item) -> float:
    """Binary F-1 (×100) of "the response contains an item", generated vs ground truth.

    pred_has_item[i]: the generated response i contains the [ITEM] placeholder.
    ref_has_item[i]: ground-truth turn i recommends an item (its sample has a target).
    Positive class = "has item": F1 = 2·TP / (2·TP + FP + FN), the value of
    ``sklearn.metrics.f1_score`` used by the PECRS code, ×100 as in Table 3 (F-1 86.04).
    Pass one entry per response turn (non-repeated samples). NaN when empty or when neither
    side has any positive (0/0; sklearn would report 0.0 there).
    """
    numerator, denominator = (float(x.sum()) for x in item_f1_terms(pred_has_item, ref_has_item))
    if denominator == 0:
        return NAN
    return 100.0 * numerator / denominator


def item_f1_terms(pred_has_item, ref_has_item) -> tuple[np.ndarray, np.ndarray]:
    """Per reply, 2·TP and 2·TP + FP + FN (each reply is 0 or 1 of TP, FP, FN): `item_f1` is the
    ratio of their sums; a paired comparison resamples them (pecrs.metrics.paired)."""
    pred = np.asarray(pred_has_item, dtype=bool).reshape(-1)
    ref = np.asarray(ref_has_item, dtype=bool).reshape(-1)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.size} predictions but {ref.size} references")
    tp = (pred & ref).astype(float)
    return 2 * tp, 2 * tp + (pred & ~ref) + (~pred & ref)


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
    never the context or padding; every sample's response counts once (a k-item turn's reply k
    times, each with its own item injected). NaN when no token.

    Note: the PECRS code logs the mean over batches of exp(batch-mean per-sentence NLL), which
    weights short responses more and is not equal to this corpus-level value.
    """
    nll = float(np.sum(total_nll))
    tokens = float(np.sum(total_tokens))
    if tokens <= 0:
        return NAN
    return math.exp(nll / tokens)
