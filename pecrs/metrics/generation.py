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


# How the PECRS code (Ravoxsg/efficient_unified_crs: engine.py / engine_validation.py
# `validate_language_metrics_batch_embeds`) writes the two texts it gives rouge_score: the
# reference is the dataset's utterance, which begins with the recommender's speaker tag "A:", the
# reply is "A: " + the generated text, and the item placeholder is "[MOVIE_ID]", which rouge_score
# reads as the two words "movie id". Its zero-shot script (zero_shot_llms.py, Table 7's LLM rows)
# writes "Recommender: " before both instead, titles in place of placeholders.
RELEASED_CODE_SPEAKER_TAG = "A: "
RELEASED_ZERO_SHOT_SPEAKER_TAG = "Recommender: "
RELEASED_CODE_PLACEHOLDER = "[MOVIE_ID]"


def as_released_code_scores(text: str, placeholder: str = "[ITEM]", speaker_tag: str = RELEASED_CODE_SPEAKER_TAG) -> str:
    """`text` as the PECRS code hands it to rouge_score: `speaker_tag` first, `placeholder` written
    as "[MOVIE_ID]", runs of whitespace (newlines included) made one space."""
    return speaker_tag + " ".join(text.replace(placeholder, RELEASED_CODE_PLACEHOLDER).split())


def rouge_1_2_paper_protocol(predictions: Sequence[str], references: Sequence[str], *,
                             placeholder: str = "[ITEM]", speaker_tag: str = RELEASED_CODE_SPEAKER_TAG
                             ) -> dict[str, float]:
    """ROUGE-1/2 (×100) as the paper's numbers were computed: `rouge_1_2` on both sides written by
    `as_released_code_scores`. Every pair then shares the word "a" of the speaker tag, and two
    replies that both hold an item share "movie id" (one word for "[ITEM]" in `rouge_1_2`), so
    this reads higher than `rouge_1_2` on the same replies: on the shipped INSPIRED model's test
    replies 25.87/4.99 against 16.90/2.85 (docs/results.md, "ROUGE as the paper computed it").
    Keys rouge1_paper_protocol, rouge2_paper_protocol; NaN for empty input."""
    if len(predictions) == 0:
        return {"rouge1_paper_protocol": NAN, "rouge2_paper_protocol": NAN}
    r1, r2 = rouge_pairs_paper_protocol(predictions, references, placeholder=placeholder, speaker_tag=speaker_tag)
    return {"rouge1_paper_protocol": 100.0 * float(r1.mean()), "rouge2_paper_protocol": 100.0 * float(r2.mean())}


def rouge_pairs_paper_protocol(predictions: Sequence[str], references: Sequence[str], *,
                               placeholder: str = "[ITEM]", speaker_tag: str = RELEASED_CODE_SPEAKER_TAG
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair ROUGE-1 and ROUGE-2 F-measures in [0, 1] as the paper's code computes them
    (`rouge_1_2_paper_protocol` averages them; a paired comparison resamples them)."""
    return rouge_pairs([as_released_code_scores(t, placeholder, speaker_tag) for t in predictions],
                       [as_released_code_scores(t, placeholder, speaker_tag) for t in references])


def medoid_reply(replies: Sequence[str], *, max_replies: int = 2000, seed: int = 0) -> str:
    """The reply of `replies` with the highest mean ROUGE-1 F-measure against all of them: the
    constant-reply baseline's one reply (beyond the paper), which is what ROUGE gives a model
    that says the same thing every turn. Chosen on training replies, scored on test ones.

    Over at most `max_replies` of them, drawn without replacement with `seed` (the mean over
    2,000 is close to the mean over all, and the pairwise table stays 2,000²). ROUGE-1 F of a
    pair is 2·overlap / (len_a + len_b) on rouge_score's tokens (stemmed, as `rouge_1_2`); the
    clipped overlap Σ_w min(c_a[w], c_b[w]) is Σ_t [c_a ≥ t]·[c_b ≥ t], one matrix product per
    count t. Every candidate also meets itself (F 1, or 0 for a text without a word): the same
    1/n for all, so no effect on the choice. Ties go to the first drawn. Which reply wins depends
    on the draw: on INSPIRED, seed 42's is also the medoid of all 7,806 training replies, seeds
    0-3 pick others that score up to 2.8 RG-1 lower on test (docs/results.md)."""
    if len(replies) == 0:
        raise ValueError("no replies to choose a constant reply from")
    from rouge_score.tokenizers import DefaultTokenizer  # imported lazily, as in rouge_pairs

    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(replies), size=min(max_replies, len(replies)), replace=False)
    texts = [replies[i] for i in drawn]
    tokenizer = DefaultTokenizer(use_stemmer=True)
    bags = [Counter(tokenizer.tokenize(t)) for t in texts]
    vocab = {w: j for j, w in enumerate(sorted(set().union(*bags)))}
    counts = np.zeros((len(texts), max(len(vocab), 1)), dtype=np.float32)       # [n, V]
    for i, bag in enumerate(bags):
        counts[i, [vocab[w] for w in bag]] = list(bag.values())
    overlap = np.zeros((len(texts), len(texts)), dtype=np.float32)              # [n, n]
    for t in range(1, int(counts.max()) + 1):
        at_least = (counts >= t).astype(np.float32)
        cols = at_least.any(axis=0)                                             # words that occur t times somewhere
        overlap += at_least[:, cols] @ at_least[:, cols].T
    lengths = counts.sum(axis=1)
    pair_lengths = lengths[:, None] + lengths[None, :]
    f1 = np.divide(2 * overlap, pair_lengths, out=np.zeros_like(overlap), where=pair_lengths > 0)
    return texts[int(np.argmax(f1.mean(axis=1)))]


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
