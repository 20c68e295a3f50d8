"""The evaluation JSON dict: every metric of §4.1 from already-computed arrays, NaN as None."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .generation import distinct_n, item_f1, perplexity, rouge_1_2, rouge_1_2_paper_protocol
from .ranking import DEFAULT_KS, check_ks, check_ranking, dedup_recall_at_k, recall_at_k, unique_items


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
      (×100), and rouge1_paper_protocol, rouge2_paper_protocol (the same replies scored as the
      paper's code scored them, `rouge_1_2_paper_protocol`: higher); predictions -> dist2,
      dist3, dist4 (`distinct_n`, whitespace tokens); pred_has_item/ref_has_item -> f1_item (×100).
    total_nll/total_tokens -> ppl. n_samples: the number of evaluated samples, with or without
      target, as the caller counts them (reported as given; None when omitted).

    Keys, always all present: recall@k…, unique, rouge1, rouge2, rouge1_paper_protocol,
    rouge2_paper_protocol, f1_item, ppl, dist2, dist3, dist4, dedup_recall@k…, naive_recall@k…, naive_dedup_recall@k…, n_samples, n_rec_samples,
    n_dedup_samples, n_gen_samples. A metric that was not given its inputs, or is undefined
    (NaN), is None; values are plain Python numbers, ready for ``json.dumps``.
    """
    ks = check_ks(ks)
    out: dict = {}
    rec = {f"recall@{k}": None for k in ks}
    dedup = {f"dedup_recall@{k}": None for k in ks}
    naive = {f"naive_recall@{k}": None for k in ks}
    naive_dedup = {f"naive_dedup_recall@{k}": None for k in ks}
    unique = n_rec = n_dedup = None

    if ranked is not None and targets is not None:
        ranked_a, targets_a = check_ranking(ranked, targets)
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

    rouge = {"rouge1": None, "rouge2": None, "rouge1_paper_protocol": None, "rouge2_paper_protocol": None}
    dists = {"dist2": None, "dist3": None, "dist4": None}
    n_gen = None
    if predictions is not None:
        n_gen = len(predictions)
        if references is not None:
            rouge = {**rouge_1_2(predictions, references), **rouge_1_2_paper_protocol(predictions, references)}
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
