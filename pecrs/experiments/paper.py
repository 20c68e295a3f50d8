"""The paper's numbers (Ravaut et al., EACL 2024), as printed, for the tables beside ours.

Scales are the paper's: recall and genre rates in percent, ROUGE and F-1 x100, Dist@K and PPL
plain, time per batch in seconds. PECRS-small/-medium are GPT-2 small/medium backbones; ours
is whatever `model.backbone` says (SmolLM2-135M by default), so rows are never the same model.
"""
from __future__ import annotations

# Table 2: recommendation (R@1, R@10, R@50 in %, Unique). ReDial trained on the full train split.
TABLE2 = {
    "redial": {"PECRS-small": {"recall@1": 4.7, "recall@10": 20.8, "recall@50": 40.5, "unique": 463},
               "PECRS-medium": {"recall@1": 5.8, "recall@10": 22.5, "recall@50": 41.6, "unique": 634}},
    "inspired": {"PECRS-small": {"recall@1": 5.4, "recall@10": 16.1, "recall@50": 33.3, "unique": 34},
                 "PECRS-medium": {"recall@1": 5.7, "recall@10": 17.9, "recall@50": 33.7, "unique": 72}},
}

# Table 3: conversation on ReDial. INSPIRED conversation numbers appear only in Table 7 (RG-1/2).
TABLE3 = {
    "redial": {"PECRS-small": {"rouge1": 36.28, "rouge2": 14.77, "f1_item": 86.04, "ppl": 9.89,
                               "dist2": 0.745, "dist3": 1.462, "dist4": 2.132},
               "PECRS-medium": {"rouge1": 36.86, "rouge2": 15.27, "f1_item": 86.36, "ppl": 8.98,
                                "dist2": 0.820, "dist3": 1.552, "dist4": 2.154}},
    "inspired": {"PECRS-small": {"rouge1": 29.72, "rouge2": 8.26}},
}

# Table 5: ablations on ReDial with PECRS-small: time/batch (s), R@50 (%), Unique, RG-1, Dist@2.
TABLE5 = {
    "full": (6.1, 40.5, 463, 36.28, 0.745),
    "no_recall": (6.1, 19.3, 21, 37.67, 0.678),
    "no_rerank": (6.1, 12.2, 87, 36.50, 0.745),
    "no_generation": (6.1, 39.2, 451, 7.76, 11.907),
    "no_share_batch": (8.6, 39.8, 291, 36.40, 0.747),
    "no_share_tasks": (9.1, 40.8, 434, 35.98, 0.727),
    "no_item_pooling": (6.1, 39.6, 530, 36.60, 0.748),
    "no_item_head": (6.1, 37.9, 453, 36.33, 0.726),
    "title_only": (4.2, 35.8, 384, 36.38, 0.765),
}

# Table 6: R@50 (%) on INSPIRED with PECRS-small, one metadata field removed at inference.
TABLE6 = {"none": 33.3, "title": 29.8, "actors": 26.9, "directors": 32.5, "genres": 30.5, "plot": 20.7}

# Table 7: zero-shot LLMs vs PECRS-small on INSPIRED test: R@1, R@10, R@50 (%), Unique, RG-1, RG-2.
TABLE7 = {
    "PECRS-small": (5.4, 16.1, 33.3, 34, 29.72, 8.26),
    "Llama-2-7B-chat": (9.3, 9.3, 9.3, 26, 19.88, 2.88),
    "Vicuna-1.5-7B": (8.2, 8.2, 8.2, 23, 21.18, 3.50),
}

# Table 8: decoding strategies, PECRS-small on ReDial: RG-1, RG-2, Dist@2, Dist@3, Dist@4.
TABLE8 = {
    "greedy": ("Greedy decoding", 38.54, 16.25, 0.208, 0.311, 0.390),
    "beam": ("Beam search", 38.23, 16.83, 0.235, 0.353, 0.444),
    "diverse_beam_0.5": ("Diverse beam search (diversity=0.5)", 39.94, 17.30, 0.190, 0.287, 0.361),
    "diverse_beam_1.0": ("Diverse beam search (diversity=1.0)", 40.29, 17.40, 0.179, 0.264, 0.320),
    "diverse_beam_1.5": ("Diverse beam search (diversity=1.5)", 40.07, 17.23, 0.172, 0.246, 0.290),
    "top_k_25": ("Top-k sampling (k=25)", 33.54, 14.40, 0.593, 1.177, 1.806),
    "top_k_50": ("Top-k sampling (k=50)", 33.37, 14.17, 0.647, 1.300, 1.989),
    "top_k_75": ("Top-k sampling (k=75)", 33.48, 14.15, 0.644, 1.303, 1.992),
    "nucleus_0.90": ("Nucleus sampling (p=0.90)", 36.35, 16.04, 0.329, 0.555, 0.760),
    "nucleus_0.95": ("Nucleus sampling (p=0.95)", 36.44, 16.02, 0.351, 0.594, 0.804),
    "nucleus_0.99": ("Nucleus sampling (p=0.99)", 36.60, 16.07, 0.352, 0.593, 0.809),
}

# Tables 9 (ReDial) and 10 (INSPIRED), PECRS-medium: genre -> (items %, test %, correctly predicted %
# or None where the paper prints "—"). Appendix B: among wrong predictions, the correct genre
# 41.20% (ReDial) / 30.04% (INSPIRED) of the time, vs 16.26% / 19.39% for random.
GENRES = {
    "redial": {
        "Comedy": (24.48, 23.74, 46.37), "Action": (21.88, 30.67, 57.65), "Drama": (17.89, 13.74, 32.93),
        "Adventure": (6.18, 6.02, 29.72), "Horror": (5.82, 7.94, 46.95), "Crime": (5.66, 4.50, 20.56),
        "Animation": (5.40, 6.71, 62.38), "Biography": (4.11, 2.50, 12.61), "Documentary": (3.27, 0.76, 22.22),
        "Fantasy": (1.00, 0.61, 6.90), "Thriller": (0.67, 0.46, 31.82), "Family": (0.62, 0.38, 0.00),
        "Mystery": (0.47, 0.57, 7.41), "Romance": (0.46, 0.04, 0.00), "TV": (0.43, 0.08, 0.00),
        "Music": (0.26, 0.20, 0.00), "Western": (0.25, 0.04, 0.00), "Science": (0.23, 0.13, 0.00),
        "Short": (0.23, 0.11, 0.00), "War": (0.21, 0.11, 0.00), "Sci-fi": (0.20, 0.06, 0.00),
        "History": (0.11, 0.00, None), "Musical": (0.10, 0.23, 9.09), "Film-noir": (0.05, 0.08, 0.00),
        "Adult": (0.02, 0.02, 0.00),
    },
    "inspired": {
        "Action": (24.01, 36.20, 50.50), "Comedy": (22.66, 17.92, 52.00), "Drama": (17.67, 13.98, 10.26),
        "Horror": (7.45, 9.68, 14.81), "Adventure": (4.86, 2.15, 66.67), "Animation": (4.86, 4.66, 7.69),
        "Crime": (4.86, 6.09, 23.53), "Biography": (4.50, 2.15, 0.00), "Documentary": (3.20, 1.79, 0.00),
        "Thriller": (0.92, 0.36, 0.00), "Fantasy": (0.86, 0.36, 0.00), "Romance": (0.80, 0.36, 0.00),
        "Mystery": (0.62, 0.00, None), "TV": (0.37, 0.00, None), "Short": (0.37, 0.00, None),
        "Science": (0.31, 0.72, 0.00), "Music": (0.25, 0.00, None), "Sci-fi": (0.25, 0.36, 0.00),
        "War": (0.12, 0.00, None), "Western": (0.12, 0.00, None), "Musical": (0.06, 0.00, None),
        "Reality-TV": (0.06, 0.00, None),
    },
}
GENRE_SUMMARY = {"redial": {"table": "Table 9", "wrong_genre_rate": 41.20, "random_genre_rate": 16.26},
                 "inspired": {"table": "Table 10", "wrong_genre_rate": 30.04, "random_genre_rate": 19.39}}

# Figures 3 (R@50 over M_train x M_inference, ReDial) and 4 (R@50 by turns before the response,
# ReDial): the paper gives them as plots only; no number can be read off the text.
