"""Evaluation metrics of PECRS (paper §4.1, Tables 2, 3, 8, 9–10).

Pure functions over numpy arrays and plain Python lists; nothing here knows about models,
tokenizers or tensors. ROUGE comes from `rouge_score` (the package the paper lists), never
re-implemented.

Scales (decided once, here):

* recall@k, dedup recall, genre rates: fractions in [0, 1]. The paper prints them as
  percentages (Table 2: "R@1 4.7" means 0.047).
* ROUGE-1/2 and the [ITEM] F-1: ×100, as the paper prints them (Table 3: RG-1 36.28, F-1 86.04).
  ROUGE comes twice: on the texts as they are (`rouge1`, `rouge2`), and as the paper's code
  scored them, speaker tag and placeholder included (`rouge1_paper_protocol`, ...), which
  reads higher on the same replies (by 9 RG-1 points for the shipped INSPIRED model): compare
  the paper's ROUGE with the latter.
* Dist@K: the CRS-literature value (distinct n-grams per generated response, can exceed 1,
  Table 3: Dist@4 2.132). Perplexity: a plain positive number (Table 3: 9.89).
* `unique_items`: an integer count (Table 2: 463).

Which samples go where, as in the reference implementation (Ravoxsg/efficient_unified_crs,
engine.py): recall@k and Unique use every sample that has a target, including the
`repeated` samples of a multi-item turn; ROUGE, the [ITEM] F-1 and Dist@K use one entry per
response turn (samples with `repeated=False`), with or without a target; perplexity uses every
sample, so a k-item turn's reference reply counts k times, each with its own item injected.

A metric that is undefined on its input (no samples, 0/0) returns ``float("nan")``;
`summarize` turns NaN into ``None`` so its output is valid JSON.

One module a concern:

* ranking.py: recall@k, dedup recall, the naive baseline's ranking, Unique (Table 2).
* generation.py: ROUGE-1/2, the [ITEM] F-1, Dist@n, perplexity (Tables 3, 7, 8), and the
  constant-reply baseline's reply (`medoid_reply`).
* genres.py: genre accuracy of top-1 recommendations (Tables 9–10).
* summary.py: `summarize`, the evaluation JSON dict built from all of the above.
"""
from .generation import (distinct_n, distinct_ratio_n, item_f1, medoid_reply, perplexity, rouge_1_2,
                         rouge_1_2_paper_protocol)
from .genres import genre_accuracy, top1_genre_accuracy
from .ranking import (DEFAULT_KS, dedup_recall_at_k, items_by_last_mention, naive_baseline_ranking, recall_at_k,
                      target_ranks, unique_items)
from .summary import summarize

__all__ = [
    "DEFAULT_KS",
    "recall_at_k",
    "target_ranks",
    "dedup_recall_at_k",
    "items_by_last_mention",
    "naive_baseline_ranking",
    "unique_items",
    "rouge_1_2",
    "rouge_1_2_paper_protocol",
    "medoid_reply",
    "item_f1",
    "distinct_n",
    "distinct_ratio_n",
    "perplexity",
    "genre_accuracy",
    "top1_genre_accuracy",
    "summarize",
]
