"""evaluate() against numbers computed by hand on a tiny fixture.

The model is a stub with planned outputs (a ranking per context, a reply per context, an NLL per
context), so that every number evaluate() reports follows from the fixture by hand: which samples
count for recall, which are dropped by dedup recall (the target_seen_before flag, not the
repeated flag), which rows the re-rank scores reorder, which samples are generated for (one per
recommender turn, with that sample's top-1 item injected), and which samples the perplexity covers
(all of them)."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pecrs.config import InferenceConfig, ModelConfig
from pecrs.data import REC_END, RECOMMENDER, SEEKER, Dialogue, Item, Turn
from pecrs.evaluate import evaluate, recall_only
from pecrs.samples import make_samples
from pecrs.testing import WordTokenizer
from pecrs.tokens import DialogueEncoder

N_ITEMS = 60
ITEMS = [Item(str(i), f"Movie {i}", 2000 + i) for i in range(N_ITEMS)]
A, B, D, E = 0, 1, 3, 4          # the catalog indices the dialogues mention

DIALOGUES = [
    Dialogue("d0", (Turn(SEEKER, "I liked [ITEM]", (str(A),)),
                    Turn(RECOMMENDER, "Try [ITEM] or [ITEM]", (str(B), str(E))),
                    Turn(SEEKER, "ok"),
                    Turn(RECOMMENDER, "Enjoy"))),
    Dialogue("d1", (Turn(RECOMMENDER, "Hi"),
                    Turn(SEEKER, "something like [ITEM]", (str(D),)),
                    Turn(RECOMMENDER, "[ITEM] then", (str(D),)))),
]
# The samples, in order:   target  seen before  repeated
#   s0  d0 turn 1            B        no           no
#   s1  d0 turn 1            E        no           yes   (same context as s0)
#   s2  d0 turn 3            -        -            no
#   s3  d1 turn 2            D        yes          no


def ranking(first: list[int], at: dict[int, int] | None = None) -> list[int]:
    """A permutation of the catalog starting with `first`, with item -> 1-based rank in `at`."""
    order = list(first) + [i for i in range(N_ITEMS) if i not in first and i not in (at or {})]
    for item, rank in sorted((at or {}).items(), key=lambda x: x[1]):
        order.insert(rank - 1, item)
    return order


# Per context (turn of the response): final ranking, generated reply, NLL per sample.
PLAN = {
    ("d0", 1): (ranking([B], {E: 5}), "Try [ITEM] or [ITEM]", 1.0),
    ("d0", 3): (ranking([9]), "Enjoy [ITEM]", 3.0),
    ("d1", 2): (ranking([7], {D: 30}), "no idea", 4.0),
}


class StubStore:
    def __init__(self, items):
        self.items, self.ids = items, [it.id for it in items]
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}

    def __len__(self):
        return len(self.items)

    def vectors(self, model, indices):
        return torch.eye(len(self))[indices]

    def all_vectors(self, model):
        return torch.eye(len(self))


class StubModel:
    """recommend / generate / training_losses from PLAN, looked up by the context tokens."""
    device = torch.device("cpu")
    config = ModelConfig()   # read for the recall temperature of the search index, which recommend ignores

    def __init__(self, encoder, samples):
        self.tokenizer = encoder.tokenizer
        self.rec_end_id = self.tokenizer.convert_tokens_to_ids(REC_END)
        self.plan = {}
        for s in samples:
            ids, _ = encoder.encode_context(s.context)
            self.plan[tuple(ids)] = PLAN[(s.dialogue_id, s.turn_index)]
        self.excluded = []   # the exclude argument of each recommend call
        self.excluded_by_sample = {}   # (dialogue id, turn index) -> its row of that argument
        self.injected = {}   # (dialogue id, turn index) of the generating sample -> the item injected
        self.sample_of = {tuple(encoder.encode_context(s.context)[0]): (s.dialogue_id, s.turn_index)
                          for s in samples}

    def eval(self):
        return self

    def decode_reply(self, ids):  # the real decoder: only the model outputs are planned
        from pecrs.model import PECRS

        return PECRS.decode_reply(self, ids)

    def merged_lora(self):
        import contextlib

        return contextlib.nullcontext(self)

    def _rows(self, context_ids, context_len):
        return [self.plan[tuple(context_ids[i, : context_len[i]].tolist())] for i in range(len(context_len))]

    def recommend(self, context_ids, context_items, context_len, catalog_vectors, m_inference, rerank=True,
                  chunk_size=1024, index=None, sort=True, exclude=None):
        self.excluded.append(exclude)
        for i in range(len(context_len)):   # which sample each row is, and what it excludes
            sample = self.sample_of[tuple(context_ids[i, : context_len[i]].tolist())]
            self.excluded_by_sample[sample] = None if exclude is None else exclude[i].tolist()
        tops, scores = [], []
        for order, _, _ in self._rows(context_ids, context_len):
            final = order[:m_inference]
            recall_order = final[::-1]            # the re-rank scores must undo this
            tops.append(recall_order)
            scores.append([-float(final.index(i)) for i in recall_order])
        return torch.tensor(tops), torch.tensor(scores)

    def generate(self, context_ids, context_items, context_len, catalog_vectors, rec, prompt_ids, strategy,
                 max_new_tokens, seed=0):
        for i, item in enumerate(rec.tolist()):
            self.injected[self.sample_of[tuple(context_ids[i, : context_len[i]].tolist())]] = item
        return [self.tokenizer(reply)["input_ids"] + [self.tokenizer.eos_token_id]
                for _, reply, _ in self._rows(context_ids, context_len)]

    def training_losses(self, batch, vectors, row, negatives, negative_rows, score_items=False):
        context_ids, context_len = batch.context_ids, batch.context_len
        nll = sum(per_sample for _, _, per_sample in self._rows(context_ids, context_len))
        return {"gen_nll_sum": torch.tensor(nll), "gen_tokens": (batch.gen_labels != -100).sum()}


@pytest.fixture
def setup():
    samples = make_samples(DIALOGUES)
    assert [(s.target, s.target_seen_before, s.repeated) for s in samples] == [
        (str(B), False, False), (str(E), False, True), (None, False, False), (str(D), True, False)]
    store = StubStore(ITEMS)
    encoder = DialogueEncoder(WordTokenizer(), store.index, 256, 64)
    return StubModel(encoder, samples), store, encoder, samples


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_evaluate_numbers_by_hand(setup, batch_size):
    model, store, encoder, samples = setup
    out = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=batch_size),
                   generate=True)
    # Recall over s0, s1, s3 (s2 has no target): B at rank 1, E at rank 5, D at rank 30.
    assert out["n_samples"] == 4 and out["n_rec_samples"] == 3
    assert (out["recall@1"], out["recall@10"], out["recall@50"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    # Dedup drops s3 (D was mentioned before), not s1 (repeated but new): s0, s1.
    assert out["n_dedup_samples"] == 2
    assert (out["dedup_recall@1"], out["dedup_recall@10"], out["dedup_recall@50"]) == pytest.approx((0.5, 1, 1))
    # Unique: top-1 of the samples with a target only: B, B, 7.
    assert out["unique"] == 2
    # Naive baseline (earlier items, latest first): s0 [A], s1 [A], s3 [D] -> only s3 hits.
    assert (out["naive_recall@1"], out["naive_recall@50"]) == pytest.approx((1 / 3, 1 / 3))
    assert out["naive_dedup_recall@1"] == 0
    # Generation: one reply per recommender turn (s0, s2, s3), each with its own top-1 injected.
    turns = [(s.dialogue_id, s.turn_index) for s in samples]
    assert model.injected == {turns[0]: B, turns[2]: 9, turns[3]: 7} and out["n_gen_samples"] == 3
    # ROUGE-1 F: 1, 2/3 ("enjoy item" vs "enjoy"), 0; ROUGE-2 F: 1, 0, 0 (x100, mean).
    assert out["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert out["rouge2"] == pytest.approx(100 / 3)
    # [ITEM] in reply vs reference: (yes, yes), (yes, no), (no, yes): F1 = 2/(2+1+1).
    assert out["f1_item"] == pytest.approx(50.0)
    # Dist@n: distinct n-grams of all replies / 3 replies (3+1+1 bigrams, 2 trigrams, 1 4-gram).
    assert (out["dist2"], out["dist3"], out["dist4"]) == pytest.approx((5 / 3, 2 / 3, 1 / 3))
    # Perplexity over all four samples: NLL 1+1+3+4, tokens (4+1)+(4+1)+(1+1)+(2+1).
    assert out["ppl"] == pytest.approx(math.exp(9 / 15))
    assert [e["recommended"] for e in out["examples"]] == ["Movie 1 (2001)", "Movie 9 (2009)", "Movie 7 (2007)"]
    assert [e["generated"] for e in out["examples"]] == ["Try [ITEM] or [ITEM]", "Enjoy [ITEM]", "no idea"]


def test_constant_reply_baseline_beside_the_replies(setup):
    """With the training replies, evaluate() also scores one constant reply, their ROUGE-1 medoid,
    at the same turns: "enjoy [ITEM]" (mean F 2/3 against the three) over "no" (1/3)."""
    from pecrs.metrics import rouge_1_2, rouge_1_2_paper_protocol

    model, store, encoder, samples = setup
    out = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=4),
                   generate=True, train_replies=["enjoy [ITEM]", "no", "enjoy [ITEM]"])
    refs = [s.response.text for s in samples if not s.repeated]
    assert out["constant_reply"] == "enjoy [ITEM]"
    assert out["constant_reply_rouge1"] == pytest.approx(rouge_1_2(["enjoy [ITEM]"] * 3, refs)["rouge1"])
    assert out["constant_reply_rouge2_paper_protocol"] == pytest.approx(
        rouge_1_2_paper_protocol(["enjoy [ITEM]"] * 3, refs)["rouge2_paper_protocol"])
    # an item in every reply, against the references' (yes, no, yes): TP at s0 and s3, FP at s2
    assert out["constant_reply_f1_item"] == pytest.approx(100 * 4 / 5)
    # the model's own figures are untouched; no training replies or no generation: no baseline
    assert out["rouge1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert "constant_reply" not in evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS),
                                            generate=True)
    assert "constant_reply" not in evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS),
                                            generate=False, train_replies=["no"])


@pytest.mark.parametrize("generate", [True, False])
def test_predictions_by_hand(setup, generate):
    """`pecrs evaluate --predictions`: per ranked sample its top 10, the target's rank and, for the
    sample that answers a turn, the reply; the same rows and ranks as the metrics above."""
    model, store, encoder, samples = setup
    out = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=2),
                   generate=generate, predictions=True)
    records = {(r["dialogue_id"], r["turn_index"], r["target"]): r for r in out["predictions"]}
    # without generation only the samples with a target are ranked: s2 has no record
    assert list(records) == [("d0", 1, str(B)), ("d0", 1, str(E))] + [("d0", 3, None)] * generate + [("d1", 2, str(D))]
    assert [r["target_rank"] for r in records.values()] == [1, 5] + [None] * generate + [30]
    assert [r["target_seen_before"] for r in records.values()] == [False, False] + [False] * generate + [True]
    assert records["d0", 1, str(B)]["top10"] == [str(i) for i in ranking([B], {E: 5})[:10]]
    replies = {key: r.get("generated") for key, r in records.items()}
    if generate:   # one reply per turn: s1 repeats s0's turn and carries none
        assert replies == {("d0", 1, str(B)): "Try [ITEM] or [ITEM]", ("d0", 1, str(E)): None,
                           ("d0", 3, None): "Enjoy [ITEM]", ("d1", 2, str(D)): "no idea"}
        assert records["d0", 3, None]["reference"] == "Enjoy"
    else:
        assert set(replies.values()) == {None}
    assert "predictions" not in evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS),
                                         generate=False)


def test_recall_only_by_hand(setup):
    model, store, encoder, samples = setup
    out = recall_only(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=2))
    assert (out["recall@1"], out["recall@10"], out["recall@50"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert out["recall_mean"] == pytest.approx(np.mean([1 / 3, 2 / 3, 1.0]))


def test_m_inference_limits_the_candidates(setup):
    """With M = 20 recall candidates, D (rank 30) is never retrieved: recall@50 drops to 2/3."""
    model, store, encoder, samples = setup
    out = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=20, batch_size=4), generate=False)
    assert out["recall@50"] == pytest.approx(2 / 3) and out["rouge1"] is None


def test_without_generation_only_the_rows_with_a_target_are_ranked(setup):
    """generate=False ranks s0, s1, s3 (not s2, which has no target) to the same numbers;
    perplexity=False skips the NLL pass (PPL None) and changes no recall number. s0 and s1 name
    two items of one turn: one context, ranked once."""
    model, store, encoder, samples = setup
    ranked_contexts = []
    recommend = model.recommend
    model.recommend = lambda context_ids, *a, **k: ranked_contexts.append(len(context_ids)) or recommend(
        context_ids, *a, **k)
    full = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=8), generate=True)
    assert ranked_contexts == [3]                     # s0 (= s1), s2, s3
    ranked_contexts.clear()
    fast = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=8),
                    generate=False, perplexity=False)
    assert ranked_contexts == [2]                     # s0 (= s1), s3
    keys = [k for k in full if "recall" in k or k in ("unique", "n_rec_samples", "n_dedup_samples")]
    assert {k: fast[k] for k in keys} == {k: full[k] for k in keys}
    assert fast["ppl"] is None and full["ppl"] == pytest.approx(math.exp(9 / 15))


def test_inject_target_turns_gives_an_item_only_to_the_turns_that_recommend(setup):
    """inject="target_turns" (the authors' code, for Table 3's F-1 and ROUGE): the turn without a
    target (s2) is generated without an item (NO_ITEM, PECRS.generation_inputs) and not even ranked;
    the others get their top-1 as in "every_turn", and every recall figure is the same."""
    model, store, encoder, samples = setup
    turns = [(s.dialogue_id, s.turn_index) for s in samples]
    ranked_contexts = []
    recommend = model.recommend
    model.recommend = lambda context_ids, *a, **k: ranked_contexts.append(len(context_ids)) or recommend(
        context_ids, *a, **k)
    settings = InferenceConfig(m_inference=N_ITEMS, batch_size=8)
    every = evaluate(model, store, encoder, samples, settings, generate=True)
    assert model.injected == {turns[0]: B, turns[2]: 9, turns[3]: 7}
    model.injected.clear()
    ranked_contexts.clear()
    gold = evaluate(model, store, encoder, samples, settings, generate=True, inject="target_turns")
    assert model.injected == {turns[0]: B, turns[2]: -1, turns[3]: 7} and ranked_contexts == [2]
    assert [e["recommended"] for e in gold["examples"]] == ["Movie 1 (2001)", None, "Movie 7 (2007)"]
    records = evaluate(model, store, encoder, samples, settings, generate=True, inject="target_turns",
                       predictions=True)["predictions"]    # every reply has its record, ranked or not
    assert [(r["target"], r["top10"] == [], r.get("generated")) for r in records] == [
        (str(B), False, "Try [ITEM] or [ITEM]"), (str(E), False, None), (None, True, "Enjoy [ITEM]"),
        (str(D), False, "no idea")]
    assert [r["target_rank"] for r in records] == [1, 5, None, 30]   # the reply not ranked has none
    keys = [k for k in every if "recall" in k or k in ("unique", "n_rec_samples", "n_gen_samples")]
    assert {k: gold[k] for k in keys} == {k: every[k] for k in keys}
    with pytest.raises(ValueError, match="inject: 'gold' is not one of every_turn, target_turns"):
        evaluate(model, store, encoder, samples, settings, generate=True, inject="gold")


def test_genres_of_the_top1_by_hand(setup):
    """Tables 9-10 in evaluate(): s0 top-1 B = target (Comedy), s1 top-1 B for target E (Comedy vs
    Drama: wrong genre), s3 top-1 7 for target D (both Horror first: right genre, wrong item)."""
    model, store, encoder, samples = setup
    genres = {B: ("Comedy",), E: ("Drama",), D: ("Horror",), 7: ("Horror", "Drama")}
    store.items = [dataclasses.replace(it, genres=genres.get(i, ("Action",))) for i, it in enumerate(store.items)]
    out = evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=4),
                   generate=False, perplexity=False)
    g = out["genres"]
    assert (g["n_samples"], g["n_wrong"], g["n_skipped"]) == (3, 2, 0)
    assert g["accuracy"] == pytest.approx(2 / 3) and g["wrong_genre_rate"] == pytest.approx(1 / 2)
    # A random wrong item has the target's first genre with (items of that genre - 1) / (60 - 1).
    assert g["random_genre_rate"] == pytest.approx((0 + 0 + 1 / 59) / 3)
    assert g["per_genre"]["Horror"] == pytest.approx({"items_share": 2 / 60, "test_share": 1 / 3, "n": 1,
                                                      "accuracy": 1.0})
    # A genre without test samples has no accuracy: None, not NaN, so the JSON stays valid.
    assert g["per_genre"]["Action"]["n"] == 0 and g["per_genre"]["Action"]["accuracy"] is None
    json.dumps(out, allow_nan=False)


def test_length_sorted_batches_cover_every_row_once_shortest_first():
    from pecrs.tokens import length_sorted_batches

    lengths = [5, 1, 9, 1, 7, 3, 3]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[1, 1, 3], [3, 5, 7], [9]]
    assert batches[0].tolist() == [1, 3, 5]          # ties keep their order (a stable sort)
    assert length_sorted_batches([], 4) == []


def test_exclude_mentioned_passes_each_samples_earlier_items(setup):
    """inference.exclude_mentioned: every ranked row gets the items its context mentions (all of
    them, `mentioned_items`, as `Recommender` excludes them), -1 padded; otherwise nothing."""
    model, store, encoder, samples = setup
    evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=8), generate=False)
    assert model.excluded == [None]
    for batch_size in (1, 3):   # length-sorted batches: each row must get its own sample's items
        model.excluded_by_sample.clear()
        evaluate(model, store, encoder, samples, InferenceConfig(m_inference=N_ITEMS, batch_size=batch_size,
                                                                 exclude_mentioned=True), generate=False,
                 perplexity=False)
        for s in samples:
            if s.target is not None:
                got = [i for i in model.excluded_by_sample[(s.dialogue_id, s.turn_index)] if i >= 0]
                assert sorted(got) == sorted(store.index[i] for i in s.earlier_items), (batch_size, s.turn_index)
    assert any(s.earlier_items for s in samples)
