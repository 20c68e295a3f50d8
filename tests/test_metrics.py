"""Every metric of pecrs.metrics against values computed by hand on small examples."""
import json
import math

import numpy as np
import pytest

from pecrs.data import Turn
from pecrs.metrics.generation import as_released_code_scores
from pecrs.metrics import (
    dedup_recall_at_k,
    distinct_n,
    distinct_ratio_n,
    genre_accuracy,
    item_f1,
    items_by_last_mention,
    naive_baseline_ranking,
    perplexity,
    recall_at_k,
    rouge_1_2,
    rouge_1_2_paper_protocol,
    summarize,
    target_ranks,
    unique_items,
)

nan = math.isnan

# 4 samples, K = 3. Targets: row0 at rank 2, row1 at rank 1, row2 absent, row3 at rank 1
# (row3 is padded with -1).
RANKED = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9], [4, -1, -1]])
TARGETS = np.array([1, 0, 2, 4])
SEEN = np.array([True, False, False, True])


# ----------------------------------------------------------------------------- recall

def test_recall_hand_values():
    r = recall_at_k(RANKED, TARGETS, ks=(1, 2, 3))
    assert r == {"recall@1": 0.5, "recall@2": 0.75, "recall@3": 0.75}


def test_target_ranks_are_0_based_and_minus_one_when_absent():
    ranked = np.array([[3, 5, -1], [1, 2, 4], [7, 7, 7]])
    assert target_ranks(ranked, np.array([5, 9, 7])).tolist() == [1, -1, 0]
    assert target_ranks(np.zeros((2, 0), dtype=np.int64), np.array([1, 2])).tolist() == [-1, -1]


def test_recall_k_larger_than_list_uses_whole_row():
    r = recall_at_k(RANKED, TARGETS)            # default ks (1, 10, 50), K = 3
    assert r == {"recall@1": 0.5, "recall@10": 0.75, "recall@50": 0.75}


def test_recall_padding_never_matches_and_lists_accepted():
    assert recall_at_k([[-1, -1]], [0], ks=(2,)) == {"recall@2": 0.0}
    assert recall_at_k([[2, 0]], [0], ks=(1, 2)) == {"recall@1": 0.0, "recall@2": 1.0}


def test_recall_empty_is_nan():
    for ranked in (np.zeros((0, 5), dtype=int), []):
        r = recall_at_k(ranked, np.zeros(0, dtype=int))
        assert set(r) == {"recall@1", "recall@10", "recall@50"}
        assert all(nan(v) for v in r.values())


def test_recall_zero_width_ranking_is_zero():
    assert recall_at_k(np.zeros((2, 0), dtype=int), [1, 2], ks=(1,)) == {"recall@1": 0.0}


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError):
        recall_at_k(RANKED, TARGETS[:3])
    with pytest.raises(ValueError):
        recall_at_k(RANKED, np.array([1, -1, 2, 4]))      # sample without target
    with pytest.raises(ValueError):
        recall_at_k(RANKED[0], TARGETS[:1])
    with pytest.raises(ValueError):
        recall_at_k(RANKED, TARGETS, ks=(0,))


def test_recall_is_vectorised_and_fast():
    rng = np.random.default_rng(0)
    n, K = 20000, 50
    ranked = np.stack([rng.permutation(1000)[:K] for _ in range(200)])
    ranked = np.tile(ranked, (n // 200, 1))
    targets = ranked[np.arange(n), rng.integers(0, K, n)]
    r = recall_at_k(ranked, targets)
    assert r["recall@50"] == 1.0
    assert 0.0 < r["recall@1"] < 0.1


# ----------------------------------------------------------------------------- dedup recall

def test_dedup_recall_keeps_unseen_targets():
    r = dedup_recall_at_k(RANKED, TARGETS, SEEN, ks=(1, 2))
    # kept rows 1 (hit at rank 1) and 2 (miss)
    assert r == {"recall@1": 0.5, "recall@2": 0.5, "n": 2}


def test_dedup_recall_all_seen_before():
    r = dedup_recall_at_k(RANKED, TARGETS, np.ones(4, dtype=bool))
    assert r["n"] == 0
    assert all(nan(r[f"recall@{k}"]) for k in (1, 10, 50))


def test_dedup_recall_none_seen_equals_recall():
    r = dedup_recall_at_k(RANKED, TARGETS, [False] * 4, ks=(1, 2))
    assert r == {**recall_at_k(RANKED, TARGETS, ks=(1, 2)), "n": 4}


def test_dedup_recall_mask_length_checked():
    with pytest.raises(ValueError):
        dedup_recall_at_k(RANKED, TARGETS, [True])


# ----------------------------------------------------------------------------- naive baseline

def test_naive_keeps_the_order_given_and_pads():
    out = naive_baseline_ranking([[9, 7, 5], [], [2]], k=2)
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, [[9, 7], [-1, -1], [2, -1]])
    r = recall_at_k(out, [7, 3, 2], ks=(1, 2, 50))
    assert r == {"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@50": 2 / 3}


def test_naive_default_width_is_50():
    assert naive_baseline_ranking([[1]]).shape == (1, 50)
    assert naive_baseline_ranking([]).shape == (0, 50)


def test_naive_last_mention_order_and_item_index():
    turns = (Turn("seeker", "[ITEM] or [ITEM]", ("a", "b")),
             Turn("recommender", "[ITEM]", ("c",)),
             Turn("seeker", "I loved [ITEM]", ("a",)))
    # first-mention order a, b, c; by latest mention: a (turn 3), c, b
    mentions = [t.items for t in turns]
    assert items_by_last_mention(mentions) == ("a", "c", "b")
    assert items_by_last_mention([]) == () and items_by_last_mention([(), ("b", "b")]) == ("b",)
    index = {"a": 10, "b": 11, "c": 12}
    ranked = naive_baseline_ranking([items_by_last_mention(mentions)], k=4, item_index=index)
    np.testing.assert_array_equal(ranked, [[10, 12, 11, -1]])
    with pytest.raises(KeyError):
        naive_baseline_ranking([("zzz",)], item_index=index)


def test_naive_duplicates_kept_once():
    np.testing.assert_array_equal(naive_baseline_ranking([[1, 2, 1]], k=3), [[1, 2, -1]])


def test_naive_dedup_recall_is_zero():
    earlier = [[3], [4, 5]]
    targets = np.array([3, 9])
    seen = np.array([True, False])
    r = dedup_recall_at_k(naive_baseline_ranking(earlier), targets, seen, ks=(1,))
    assert r == {"recall@1": 0.0, "n": 1}


# ----------------------------------------------------------------------------- unique

def test_unique_items():
    assert unique_items([3, 3, 5, -1, 7]) == 3
    assert unique_items(np.array([2, 2, 2])) == 1
    assert unique_items([]) == 0
    assert unique_items([-1, -1]) == 0


# ----------------------------------------------------------------------------- ROUGE

def test_rouge_hand_checkable():
    # unigrams: the cat sat on the mat / the cat sat on a mat -> 5 of 6 shared: F = 5/6
    # bigrams: the-cat cat-sat sat-on shared, 3 of 5 each side: F = 3/5
    r = rouge_1_2(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert r["rouge1"] == pytest.approx(100 * 5 / 6)
    assert r["rouge2"] == pytest.approx(60.0)


def test_rouge_macro_average_over_pairs():
    r = rouge_1_2(["the cat sat on a mat", "hello world"],
                  ["the cat sat on the mat", "Hello, world!"])
    assert r["rouge1"] == pytest.approx((100 * 5 / 6 + 100) / 2)
    assert r["rouge2"] == pytest.approx((60 + 100) / 2)


def test_rouge_stemming_and_item_token():
    assert rouge_1_2(["movies"], ["movie"])["rouge1"] == pytest.approx(100.0)
    assert rouge_1_2(["movies"], ["movie"], use_stemmer=False)["rouge1"] == 0.0
    # "[ITEM]" is tokenised as the word "item"
    assert rouge_1_2(["watch [ITEM]"], ["watch item"])["rouge2"] == pytest.approx(100.0)


def test_rouge_paper_protocol_adds_the_speaker_tag_and_the_codes_placeholder():
    # The paper's code scores "A: " + text on both sides: two unrelated replies share "a".
    assert rouge_1_2(["hi"], ["bye"]) == {"rouge1": 0.0, "rouge2": 0.0}
    r = rouge_1_2_paper_protocol(["hi"], ["bye"])
    assert r == {"rouge1_paper_protocol": pytest.approx(50.0), "rouge2_paper_protocol": 0.0}
    # [ITEM] becomes "[MOVIE_ID]", two words: [a see movie id] vs [a watch movie id now]
    # share 3 unigrams (P 3/4, R 3/5, F 2/3) and "movie id" (P 1/3, R 1/4, F 2/7); as the
    # texts stand, [see item] vs [watch item now] share 1 unigram (F 0.4) and no bigram.
    assert rouge_1_2(["see [ITEM]"], ["watch [ITEM] now"]) == {"rouge1": pytest.approx(40.0), "rouge2": 0.0}
    r = rouge_1_2_paper_protocol(["see [ITEM]"], ["watch [ITEM] now"])
    assert r["rouge1_paper_protocol"] == pytest.approx(200 / 3)
    assert r["rouge2_paper_protocol"] == pytest.approx(200 / 7)
    # Another dataset's placeholder is rewritten the same way.
    assert rouge_1_2_paper_protocol(["see <m>"], ["watch <m> now"], placeholder="<m>") == r
    assert as_released_code_scores("so\n\ngood  [ITEM]") == "A: so good [MOVIE_ID]"
    empty = rouge_1_2_paper_protocol([], [])
    assert nan(empty["rouge1_paper_protocol"]) and nan(empty["rouge2_paper_protocol"])


def test_medoid_reply_is_the_reply_closest_in_rouge1_to_all_others():
    from pecrs.metrics import medoid_reply

    # Repeated words make clipping matter: "great great great" shares one "great" with "a great one".
    replies = ["great great great", "have you seen [ITEM] it is great", "what genre do you like",
               "have you seen it", "you should see [ITEM]", "a great one", "do you like horror",
               "have you seen [ITEM]", "hi", "it is a great movie have you seen it"]
    brute = [rouge_1_2([c] * len(replies), replies)["rouge1"] for c in replies]
    assert medoid_reply(replies) == replies[int(np.argmax(brute))] != replies[0]
    assert medoid_reply(replies[::-1]) == replies[int(np.argmax(brute))]      # not tied to the order
    # Clipped counts decide here: "you you you like" shares three words with "you you you see"
    # (ROUGE-1 mean 55.95, tied with "you you you see"); counting each shared word once would pick
    # "you like it" or "you see it" (46.83).
    echoes = ["you you you like", "you you you see", "you you you want", "you like it", "you see it", "hi there"]
    assert medoid_reply(echoes) in ("you you you like", "you you you see")
    # a draw of 3 (numpy's default_rng(seed).choice) chooses among those 3 only, by the same rule
    drawn = [replies[i] for i in np.random.default_rng(1).choice(len(replies), size=3, replace=False)]
    among = [rouge_1_2([c] * 3, drawn)["rouge1"] for c in drawn]
    assert medoid_reply(replies, max_replies=3, seed=1) == drawn[int(np.argmax(among))]
    assert medoid_reply(["only"]) == "only"
    with pytest.raises(ValueError, match="no replies"):
        medoid_reply([])


def test_rouge_precision_recall_asymmetry_is_f_measure():
    # pred "a b" vs ref "a b c d": P = 1, R = 1/2, F = 2/3
    assert rouge_1_2(["aa bb"], ["aa bb cc dd"])["rouge1"] == pytest.approx(200 / 3)


def test_rouge_empty_and_mismatch():
    r = rouge_1_2([], [])
    assert nan(r["rouge1"]) and nan(r["rouge2"])
    assert rouge_1_2([""], ["something"]) == {"rouge1": 0.0, "rouge2": 0.0}
    with pytest.raises(ValueError):
        rouge_1_2(["a"], [])


# ----------------------------------------------------------------------------- item F1

def test_item_f1_hand_values():
    # TP = 2, FP = 1, FN = 1 -> F1 = 4 / 6
    assert item_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == pytest.approx(100 * 4 / 6)
    assert item_f1([True, False], [True, False]) == pytest.approx(100.0)
    assert item_f1([True, True], [False, False]) == 0.0


def test_item_f1_undefined_and_mismatch():
    assert nan(item_f1([], []))
    assert nan(item_f1([False, False], [False, False]))
    with pytest.raises(ValueError):
        item_f1([True], [True, False])


# ----------------------------------------------------------------------------- Dist@n

def test_distinct_n_is_distinct_ngrams_per_text():
    texts = ["a b c", "a b d"]
    assert distinct_n(texts, 1) == 4 / 2           # {a, b, c, d}
    assert distinct_n(texts, 2) == 3 / 2           # {ab, bc, bd}: > 1 is possible
    assert distinct_n(texts, 3) == 2 / 2           # {abc, abd}
    assert distinct_n(texts, 4) == 0.0


def test_distinct_n_details():
    assert distinct_n(["a b c", "x"], 2) == 2 / 2          # short text still counts
    assert distinct_n(["a b c", ""], 2) == 2 / 2           # so does an empty reply (EOS first)
    assert distinct_n(["", ""], 1) == 0.0
    assert distinct_n(["A b", "a b"], 2) == 2 / 2          # case-sensitive, whitespace split
    assert distinct_n([["a", "b"], ["a", "b"]], 2) == 1 / 2  # pre-tokenised input
    assert distinct_n(["a-b"], 1, tokenize=lambda s: s.split("-")) == 2.0
    assert nan(distinct_n([], 2))
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_distinct_ratio_n():
    texts = ["a b c", "a b d"]
    assert distinct_ratio_n(texts, 2) == 3 / 4
    assert distinct_ratio_n(texts, 1) == 4 / 6
    assert nan(distinct_ratio_n(texts, 4))
    assert nan(distinct_ratio_n([], 2))


# ----------------------------------------------------------------------------- perplexity

def test_perplexity():
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    # per-sample sums: (ln2 + 3 ln2) / (1 + 3) -> exp(ln 2) = 2
    assert perplexity(np.array([math.log(2), 3 * math.log(2)]), np.array([1, 3])) == \
        pytest.approx(2.0)
    assert perplexity(0.0, 5) == 1.0
    assert nan(perplexity(0.0, 0))
    assert nan(perplexity([], []))


# ----------------------------------------------------------------------------- genres

CATALOG = [("Comedy",), ("Comedy", "Drama"), ("Action", "Comedy"), ("Drama",), ("Action",)]
TARGET_G = [("Comedy",), ("Action", "Comedy"), ("Drama",), (), ("Comedy", "Drama")]
PRED_G = [("Comedy", "Drama"), ("Action",), ("Comedy", "Drama"), ("Drama",), ()]
CORRECT = [False, True, False, False, False]


def test_genre_accuracy_first_genre():
    g = genre_accuracy(PRED_G, TARGET_G, CORRECT, CATALOG)
    # evaluated: samples 0, 1, 2, 4 (3 has no genre); hits T, T, F, F
    assert g["n_samples"] == 4 and g["n_skipped"] == 1 and g["n_wrong"] == 3
    assert g["accuracy"] == 0.5
    assert g["wrong_genre_rate"] == pytest.approx(1 / 3)       # wrong: 0 (hit), 2, 4
    # first-genre counts Comedy 2, Action 2, Drama 1; (c - 1) / (5 - 1) per sample
    assert g["random_genre_rate"] == pytest.approx((0.25 + 0.25 + 0.0 + 0.25) / 4)
    assert list(g["per_genre"]) == ["Action", "Comedy", "Drama"]
    assert g["per_genre"]["Comedy"] == {"items_share": 0.4, "test_share": 0.5, "n": 2,
                                        "accuracy": 0.5}
    assert g["per_genre"]["Action"] == {"items_share": 0.4, "test_share": 0.25, "n": 1,
                                        "accuracy": 1.0}
    assert g["per_genre"]["Drama"] == {"items_share": 0.2, "test_share": 0.25, "n": 1,
                                       "accuracy": 0.0}


def test_genre_accuracy_any_genre():
    g = genre_accuracy(PRED_G, TARGET_G, CORRECT, CATALOG, match="any")
    assert g["accuracy"] == 0.75                                # sample 2 now matches
    assert g["wrong_genre_rate"] == pytest.approx(2 / 3)
    # any-genre counts Comedy 3, Action 2, Drama 2
    assert g["random_genre_rate"] == pytest.approx((0.5 + 0.25 + 0.25 + 0.5) / 4)


def test_genre_accuracy_edge_cases():
    g = genre_accuracy([], [], [], CATALOG)
    assert g["n_samples"] == 0 and nan(g["accuracy"]) and nan(g["random_genre_rate"])
    assert all(nan(v["accuracy"]) and v["n"] == 0 for v in g["per_genre"].values())
    g = genre_accuracy([("Action",)], [("Action",)], [True], CATALOG)
    assert nan(g["wrong_genre_rate"]) and g["n_wrong"] == 0
    with pytest.raises(ValueError):
        genre_accuracy(PRED_G, TARGET_G, CORRECT[:2], CATALOG)
    with pytest.raises(ValueError):
        genre_accuracy(PRED_G, TARGET_G, CORRECT, CATALOG, match="all")


# ----------------------------------------------------------------------------- summary

KEYS = {"recall@1", "recall@10", "recall@50", "unique", "rouge1", "rouge2", "rouge1_paper_protocol",
        "rouge2_paper_protocol", "f1_item", "ppl",
        "dist2", "dist3", "dist4", "dedup_recall@1", "dedup_recall@10", "dedup_recall@50",
        "naive_recall@1", "naive_recall@10", "naive_recall@50", "naive_dedup_recall@1",
        "naive_dedup_recall@10", "naive_dedup_recall@50", "n_samples", "n_rec_samples",
        "n_dedup_samples", "n_gen_samples"}


def test_summarize_full():
    naive = naive_baseline_ranking([[1], [], [3, 2], [4]])   # most recent first
    s = summarize(ranked=RANKED, targets=TARGETS, seen_before=SEEN, naive_ranked=naive,
                  predictions=["a b c", "a b d"], references=["a b c", "x y"],
                  pred_has_item=[True, False], ref_has_item=[True, True],
                  total_nll=2 * math.log(3), total_tokens=2, n_samples=6)
    assert set(s) == KEYS
    assert s["recall@1"] == 0.5 and s["recall@10"] == 0.75 and s["recall@50"] == 0.75
    assert s["unique"] == 4                                     # first column 3, 0, 7, 4
    assert s["dedup_recall@1"] == 0.5 and s["n_dedup_samples"] == 2
    assert s["naive_recall@1"] == 0.5 and s["naive_recall@50"] == 0.75  # rows 0, 3 and 2
    assert s["naive_dedup_recall@50"] == 0.5                    # kept rows 1 (miss), 2 (hit)
    assert s["rouge1"] == pytest.approx(50.0) and s["rouge2"] == pytest.approx(50.0)
    # "A: a b d" vs "A: x y": only the speaker tag's "a" is shared (P 1/4, R 1/3, F 2/7)
    assert s["rouge1_paper_protocol"] == pytest.approx(100 * (1 + 2 / 7) / 2)
    assert s["rouge2_paper_protocol"] == pytest.approx(50.0)
    assert s["f1_item"] == pytest.approx(100 * 2 / 3)
    assert s["ppl"] == pytest.approx(3.0)
    assert s["dist2"] == 1.5 and s["dist3"] == 1.0 and s["dist4"] == 0.0
    assert s["n_samples"] == 6 and s["n_rec_samples"] == 4 and s["n_gen_samples"] == 2
    json.dumps(s, allow_nan=False)
    assert all(v is None or type(v) in (int, float) for v in s.values())


def test_summarize_empty_gives_none_not_nan():
    s = summarize()
    assert set(s) == KEYS and all(v is None for v in s.values())
    s = summarize(ranked=np.zeros((0, 50), dtype=int), targets=np.zeros(0, dtype=int),
                  seen_before=np.zeros(0, dtype=bool), predictions=[], references=[])
    assert s["recall@1"] is None and s["unique"] == 0 and s["n_rec_samples"] == 0
    assert s["rouge1"] is None and s["rouge1_paper_protocol"] is None and s["dist2"] is None
    assert s["n_gen_samples"] == 0
    json.dumps(s, allow_nan=False)


def test_summarize_all_targets_seen_before():
    s = summarize(ranked=RANKED, targets=TARGETS, seen_before=np.ones(4, dtype=bool))
    assert s["n_dedup_samples"] == 0 and s["dedup_recall@1"] is None
    assert s["recall@1"] == 0.5
