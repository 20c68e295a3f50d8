"""The library API (pecrs.recommender) and the retrieval indexes (pecrs.retrieval), on a tiny
random checkpoint and a toy catalog (pecrs.testing.make_tiny_run)."""
import json
from pathlib import Path

import pytest
import torch

from pecrs.catalog import ItemStore
from pecrs.data import DataError, Dialogue, Item, Turn
from pecrs.catalog_source import CATALOG_FILE, read_items_lenient
from pecrs.dialogue_input import clip_text
from pecrs.heads import recall_logits
from pecrs.recommender import Recommender
from pecrs.retrieval import ExactIndex, FaissIndex, build_index
from pecrs.samples import make_samples
from pecrs.testing import TURNS, make_tiny_run, toy_items


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("recommender"))


@pytest.fixture(scope="module")
def rec(run, tmp_path_factory):
    run_dir, items = run
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu",
                                       cache_dir=tmp_path_factory.mktemp("cache"))


def test_recommend_ranks_the_catalog(rec):
    recs = rec.recommend(TURNS, k=5)
    assert [r.rank for r in recs] == [1, 2, 3, 4, 5]
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert len({r.item.id for r in recs}) == 5
    assert all(rec.items[r.item.id] == r.item for r in recs)
    # k past m_inference (8) widens the candidate list instead of truncating; k past N gives N.
    assert len(rec.recommend(TURNS, k=10)) == 10
    assert len(rec.recommend(TURNS, k=50)) == 12


def test_dialogue_forms_agree(rec):
    turns = [Turn(t["role"], t["text"], tuple(t.get("items", ()))) for t in TURNS]
    expected = [(r.item.id, r.score) for r in rec.recommend(TURNS, k=4)]
    for form in (turns, tuple(turns), Dialogue("d", tuple(turns))):
        got = [(r.item.id, r.score) for r in rec.recommend(form, k=4)]
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[1] for g in got] == pytest.approx([e[1] for e in expected])


def test_respond_is_reproducible_and_fills_items(rec):
    a = rec.respond(TURNS, seed=3)
    b = rec.respond(TURNS, seed=3)
    assert a == b
    assert "[ITEM]" not in a.text and a.raw_text.count("[ITEM]") == len(a.items)
    assert a.recommended[0] == rec.recommend(TURNS, k=1)[0].item
    assert a.turn.role == "recommender" and len(a.turn.items) == len(a.items)
    greedy = rec.respond(TURNS, decoding="greedy")
    assert greedy == rec.respond(TURNS, decoding="greedy")


def test_generation_layout_holds_the_k_items_between_rec_and_rec_end(rec):
    """PECRS.generation_inputs (the one layout, evaluated and served): the context, then [REC],
    the top k re-ranked vectors in order, [REC_END] and the prompt, left-padded per row."""
    turns = rec.turns(TURNS)
    ids, slots, length = rec._context(turns)
    prompt = rec.encoder.role_ids["recommender"]
    top, _ = rec._rank((ids, slots, length), 3)
    one, attn1 = rec.model.generation_inputs(ids, slots, length, rec.vectors, torch.tensor([top[:1]]), prompt)
    three, attn3 = rec.model.generation_inputs(ids, slots, length, rec.vectors, torch.tensor([top]), prompt)
    n = int(length[0])
    assert three.shape[1] == one.shape[1] + 2 == n + 3 + 1 + len(prompt)
    assert torch.allclose(three[0, n:n + 3], rec.vectors[top]) and torch.allclose(one[0, n], rec.vectors[top[0]])
    assert attn1.all() and attn3.all()
    # two rows of different lengths: the shorter is padded on the left, and its tokens are its own
    batch_ids = torch.full((2, n + 4), rec.model.tokenizer.pad_token_id)
    batch_ids[0, :n], batch_ids[1, :n - 4] = ids[0], ids[0, 4:]
    batch_slots = torch.full((2, n + 4), -1)
    batch_slots[0, :n], batch_slots[1, :n - 4] = slots[0], slots[0, 4:]
    lengths = torch.tensor([n, n - 4])
    embeds, attn = rec.model.generation_inputs(batch_ids, batch_slots, lengths, rec.vectors,
                                               torch.tensor([top[0], top[1]]), prompt)
    assert attn[0].all() and (attn[1, :4] == 0).all() and attn[1, 4:].all()
    assert torch.allclose(embeds[0], one[0])
    assert torch.allclose(embeds[1, 4 + n - 4], rec.vectors[top[1]])


def test_a_row_without_an_item_is_generated_from_its_context_without_rec(rec):
    """NO_ITEM in `recommended` (`pecrs evaluate --inject target-turns` on a turn that recommends
    nothing): that row's input is its context without the closing [REC], then the prompt, the
    layout a turn without a target trains on (D̃_t, §3.4); the other rows keep their item."""
    from pecrs.tokens import NO_ITEM

    turns = rec.turns(TURNS)
    ids, slots, length = rec._context(turns)
    prompt = rec.encoder.role_ids["recommender"]
    top, _ = rec._rank((ids, slots, length), 1)
    n = int(length[0])
    assert int(ids[0, n - 1]) == rec.model.tokenizer.convert_tokens_to_ids("[REC]")
    two_ids, two_slots = ids.repeat(2, 1), slots.repeat(2, 1)
    embeds, attn = rec.model.generation_inputs(two_ids, two_slots, length.repeat(2), rec.vectors,
                                               torch.tensor([top[0], NO_ITEM]), prompt)
    alone, _ = rec.model.generation_inputs(ids, slots, length, rec.vectors, torch.tensor([top[0]]), prompt)
    assert torch.equal(embeds[0], alone[0]) and attn[0].all()
    # row 1: three fewer tokens ([REC], v, [REC_END]), padded on the left
    assert attn[1].tolist() == [0] * 3 + [1] * (n - 1 + len(prompt))
    expected_ids = torch.cat([ids[0, :n - 1], torch.tensor(prompt)]).unsqueeze(0)
    expected_items = torch.cat([slots[0, :n - 1], torch.full((len(prompt),), NO_ITEM)]).unsqueeze(0)
    assert (expected_items >= 0).any()   # the context's own items stay
    expected = rec.model.embed(expected_ids, expected_items, rec.vectors)
    assert torch.equal(embeds[1, 3:], expected[0])


def test_served_and_evaluated_replies_end_by_the_same_rule(rec, monkeypatch):
    """A reply ends at EOS or at a newline (the next speaker's turn) whether it is served
    (Recommender.respond) or evaluated (evaluate.generate_responses): both go through
    PECRS.generate, and both decode with PECRS.decode_reply."""
    import numpy as np

    import pecrs.decoding as decoding
    from pecrs.evaluate import generate_responses

    stops = []
    real = decoding.generate

    def spy(*args, **kwargs):
        stops.append(list(kwargs["eos_token_id"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "generate", spy)
    served = rec.respond(TURNS, decoding="greedy")
    encoded = rec.encoder.encode_all(make_samples([Dialogue("d", (*rec.turns(TURNS), Turn("recommender", "ok")))]))
    top = rec._rank(rec._context(rec.turns(TURNS)), 1)[0]
    evaluated = generate_responses(rec.model, encoded[-1:], np.array(top), rec.vectors, 1, "greedy",
                                   rec.config.model.response_max_tokens)
    newline = rec.model.tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(stops) == 2 and stops[0] == stops[1] == rec.model.end_of_turn_ids
    assert rec.model.tokenizer.eos_token_id in stops[0] and newline[0] in stops[0]
    assert served.raw_text == evaluated[0]


def test_a_reply_has_no_more_item_slots_than_items_injected(rec, monkeypatch):
    """PECRS.generate caps [ITEM] at the number of injected items, served and evaluated alike."""
    import pecrs.decoding as decoding

    budgets = []
    real = decoding.generate

    def spy(*args, **kwargs):
        budgets.append(kwargs["token_budget"])
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "generate", spy)
    item = rec.model.tokenizer.convert_tokens_to_ids("[ITEM]")
    assert rec.respond(TURNS, decoding="greedy").raw_text.count("[ITEM]") <= 1
    assert rec.respond(TURNS, decoding="greedy", k_items=3).raw_text.count("[ITEM]") <= 3
    assert budgets == [{item: 1}, {item: 3}]


def test_no_repeat_ngram_reaches_generation_served_and_evaluated(run, rec, monkeypatch):
    """inference.no_repeat_ngram is applied to whatever strategy a reply uses, in Recommender.respond
    and in evaluate alike; 0 leaves the preset as the paper has it."""
    import pecrs.decoding as decoding
    from pecrs.config import InferenceConfig
    from pecrs.evaluate import evaluate

    strategies = []
    real = decoding.generate

    def spy(model, embeds, mask, strategy, **kwargs):
        strategies.append(strategy)
        return real(model, embeds, mask, strategy, **kwargs)

    monkeypatch.setattr(decoding, "generate", spy)
    rec.respond(TURNS, decoding="greedy")
    rec.no_repeat_ngram = 3
    try:
        rec.respond(TURNS, decoding="greedy")
    finally:
        rec.no_repeat_ngram = 0
    samples = make_samples([Dialogue("d", (*rec.turns(TURNS), Turn("recommender", "ok")))])[-1:]
    m = rec.config.model
    store = ItemStore(rec.item_list, rec.model.tokenizer, m.item_fields, m.item_max_tokens)
    inference = InferenceConfig(m_inference=8, decoding="greedy", no_repeat_ngram=4)
    evaluate(rec.model, store, rec.encoder, samples, inference, perplexity=False, max_new_tokens=4)
    assert strategies == ["greedy", {"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 3},
                          {"do_sample": False, "num_beams": 1, "no_repeat_ngram_size": 4}]
    with pytest.raises(ValueError, match="inference.no_repeat_ngram: expected an integer >= 0"):
        Recommender(rec.model, rec.config, rec.items, rec.vectors, no_repeat_ngram=-1)


def test_several_items_per_turn(rec):
    items = [rec.items["1"], rec.items["2"]]
    r = Recommender._fill("Try [ITEM] or [ITEM], and [ITEM] again.", items)
    assert r.text == "Try Movie 1 (2001) or Movie 2 (2002), and Movie 2 (2002) again."
    assert r.items == [items[0], items[1], items[1]]
    assert r.turn.items == ("1", "2", "2")
    one = Recommender._fill("[ITEM] and [ITEM]", items[:1])
    assert one.text == "Movie 1 (2001) and Movie 1 (2001)"  # k=1: as evaluate.render_response
    resp = rec.respond(TURNS, k_items=3, seed=0)
    assert [it.id for it in resp.recommended] == [r.item.id for r in rec.recommend(TURNS, k=3)]
    assert set(resp.items) <= set(resp.recommended)
    # The response turn goes back into the dialogue.
    rec.respond([*TURNS, resp.turn, {"role": "seeker", "text": "thanks"}], seed=0)


@pytest.mark.parametrize("dialogue, message", [
    ([], "empty dialogue"),
    ("hello", "list of turns"),
    ([{"role": "bot", "text": "hi"}], "unknown role 'bot'"),
    ([{"role": "seeker"}], "turns[0].text"),
    ([{"role": "seeker", "text": "hi", "mood": "happy"}], "unknown key"),
    ([{"role": "seeker", "text": 3}], "expected a string"),
    ([{"role": "seeker", "text": "hi", "items": 0}], "expected a list of item ids"),   # once read as no items
    ([{"role": "seeker", "text": "I like [ITEM]"}], "1 [ITEM] placeholder(s) but 0 item id(s)"),
    ([{"role": "seeker", "text": "I like [ITEM]", "items": ["nope"]}], "item id 'nope' is not in the catalog"),
    ([{"role": "seeker", "text": "hello \udcff world"}], "turns[0].text"),   # undecodable bytes, surrogateescape
    ([Turn("seeker", "ok"), 5], "turns[1]"),
    ([Turn("seeker", "[ITEM] [ITEM]", "12")], "expected a list of item ids, got '12'"),   # once items 1 and 2
])
def test_bad_dialogues_are_clear_errors(rec, dialogue, message):
    with pytest.raises(DataError, match=None) as e:
        rec.recommend(dialogue)
    assert message in str(e.value)


def test_typed_layout_markers_are_read_as_plain_text(rec):
    """A seeker may type "[REC]" (a film's title) or "<|im_end|>": accepted, and the context the
    model reads holds no [REC] but its own last one."""
    typed = [{"role": "seeker", "text": "hi [REC] [SEP] [REC_END] <|im_end|>"}]
    assert len(rec.recommend(typed, k=3)) == 3
    ids, _ = rec._context(rec.turns(typed))[:2]
    marker = rec.encoder.rec
    assert ids[0].tolist().count(marker) == 1 and ids[0, -1].item() == marker


def test_user_turns_are_built_as_the_loaders_build_theirs(rec):
    """A pasted INSPIRED turn holds the dataset's QUOTATION_MARK escape: the model was trained on
    the loaders' turns, which read it back, so user input reads it back too (one rule, make_turn)."""
    pasted = [{"role": "seeker", "text": "IQUOTATION_MARKm after QUOTATION_MARKHeatQUOTATION_MARK"}]
    assert rec.turns(pasted)[0].text == 'I\'m after "Heat"'
    # title linking (chat's "read as", the server's read_as) reads it the same way: the quoted title links
    title = rec.item_list[3].title
    text, ids = rec.link_titles(f"I loved QUOTATION_MARK{title}QUOTATION_MARK")
    assert text == 'I loved "[ITEM]"' and ids == [rec.item_list[3].id]
    with pytest.raises(DataError, match="field 'text': expected a string, got NoneType"):
        rec.link_titles(None)


def test_served_replies_fold_lora_as_evaluation_does(rec, monkeypatch):
    """respond runs with LoRA folded into the weights (PECRS.merged_lora), as `evaluate`
    generates, and the weights are given back after it; recommend (one pass) keeps LoRA apart."""
    entered = []
    inner = rec.model.merged_lora

    def counted():
        entered.append(1)
        return inner()

    monkeypatch.setattr(rec.model, "merged_lora", counted)
    before = {n: p.clone() for n, p in rec.model.lm.named_parameters() if n.endswith("base_layer.weight")}
    rec.recommend(TURNS, k=3)
    assert entered == []
    rec.respond(TURNS, seed=0)
    assert len(entered) == 1
    assert all(torch.equal(p, before[n]) for n, p in rec.model.lm.named_parameters() if n in before)


def test_bad_arguments(rec):
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend(TURNS, k=0)
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        rec.respond(TURNS, decoding="telepathy")
    with pytest.raises(ValueError, match="k_items"):
        rec.respond(TURNS, k_items=0)
    # each once a raw error from torch or transformers, a silent default, or taken as True
    for call, kwargs, message in [(rec.recommend, {"k": True}, "k must be an integer"),
                                  (rec.recommend, {"link_titles": "no"}, "link_titles must be True or False"),
                                  (rec.recommend, {"exclude_mentioned": "no"}, "exclude_mentioned must be"),
                                  (rec.respond, {"max_new_tokens": "5"}, "max_new_tokens must be an integer"),
                                  (rec.respond, {"max_new_tokens": 0}, "max_new_tokens must be an integer from 1"),
                                  (rec.respond, {"max_new_tokens": 10 ** 5}, "to 1,024"),
                                  (rec.respond, {"seed": "x"}, "seed must be an integer"),
                                  (rec.respond, {"seed": 2 ** 70}, "seed must be an integer from 0 to")]:
        with pytest.raises(ValueError, match=message):
            call(TURNS, **kwargs)


def test_overlong_text_is_cut_to_the_budget(rec):
    assert rec.max_text_chars == 16 * 64
    huge = "blah " * 100_000 + "and I love [ITEM]"
    recs = rec.recommend([{"role": "seeker", "text": huge, "items": ["4"]}], k=3)
    assert len(recs) == 3
    same = rec.recommend([{"role": "seeker", "text": huge[-rec.max_text_chars:], "items": ["4"]}], k=3)
    assert [r.item.id for r in recs] == [r.item.id for r in same]
    # The cut never splits a placeholder and drops the ids of the placeholders it removes.
    assert clip_text("[ITEM] abc [ITEM] xy", ["a", "b"], 12) == ("bc [ITEM] xy", ["b"])
    assert clip_text("[ITEM] abc [ITEM] xy", ["a", "b"], 7) == ("[ITEM] xy", ["b"])   # kept whole
    assert clip_text("[ITEM] abc [ITEM] xy", ["a", "b"], 3) == (" xy", [])
    assert clip_text("short", [], 10) == ("short", [])


def test_catalog_sources_and_disk_cache(run, rec, tmp_path):
    run_dir, items_path = run
    cache = tmp_path / "cache"
    first = Recommender.from_pretrained(run_dir, cache_dir=cache)          # the run's dataset catalog
    assert first.report.source.endswith("items.jsonl") and not first.report.vectors_from_cache
    assert Path(first.report.cache_path).is_file()
    second = Recommender.from_pretrained(run_dir / "best", catalog=items_path, cache_dir=cache)
    assert second.report.vectors_from_cache and "loaded from cache" in second.report.summary()
    assert torch.equal(first.vectors, second.vectors)
    assert torch.allclose(first.vectors, rec.vectors)
    # Another catalog (or other contents) is another key.
    fewer = Recommender.from_pretrained(run_dir, catalog=toy_items(8), cache_dir=cache)
    assert not fewer.report.vectors_from_cache and len(fewer) == 8
    assert torch.allclose(fewer.vectors, first.vectors[:8], atol=1e-5)
    assert len(list(cache.glob("*.pt"))) == 2
    no_cache = Recommender.from_pretrained(run_dir, catalog={i.id: i for i in toy_items(3)}, cache_dir=False)
    assert no_cache.report.cache_path is None and len(no_cache) == 3


def test_vectors_match_the_training_item_store(rec):
    """Serving's vectors are the training store's; `all_vectors` (length-sorted chunks written back
    to catalog order) equals one `vectors` call over the catalog in order, whatever the chunk size,
    with the states held or not, and "adapted" runs the LoRA-adapted LM instead."""
    m = rec.config.model
    store = ItemStore(rec.item_list, rec.model.tokenizer, m.item_fields, m.item_max_tokens).cache_base_states(rec.model)
    assert torch.allclose(store.all_vectors(rec.model), rec.vectors, atol=1e-5)
    # Titles alone, long and short in turn: catalog order is not length order.
    mixed = [it for full in rec.item_list for it in (full, Item(f"t{full.id}", "X" * (len(full.id) % 3 + 1)))]
    everything = torch.arange(len(mixed))
    for encoding in ("cached", "adapted"):
        fresh = ItemStore(mixed, rec.model.tokenizer, ["title"], m.item_max_tokens, encoding=encoding)
        lengths = fresh.attention_mask.sum(1)
        assert not bool((lengths[1:] >= lengths[:-1]).all())
        in_order = fresh.vectors(rec.model, everything)
        assert torch.allclose(fresh.all_vectors(rec.model, batch_size=5), in_order, atol=1e-5)
        assert torch.allclose(fresh.all_vectors(rec.model), in_order, atol=1e-5)
    cached = ItemStore(mixed, rec.model.tokenizer, ["title"], m.item_max_tokens).all_vectors(rec.model)
    assert not torch.allclose(in_order, cached, atol=1e-3)   # the adapter changes the item states
    with pytest.raises(ValueError, match="model.item_encoding must be 'cached' or 'adapted', not 'frozen'"):
        ItemStore(rec.item_list, rec.model.tokenizer, m.item_fields, m.item_max_tokens, encoding="frozen")
    with pytest.raises(ValueError, match="encodes items with the adapted LM"):   # base states it would never read
        ItemStore(rec.item_list, rec.model.tokenizer, m.item_fields, m.item_max_tokens, "adapted").cache_base_states(rec.model)


def test_save_pretrained_round_trip(rec, tmp_path):
    rec.m_inference, saved_decoding = 10, rec.decoding
    rec.decoding, rec.no_repeat_ngram = "greedy", 3
    try:
        out = rec.save_pretrained(tmp_path / "saved")
    finally:
        rec.m_inference, rec.decoding, rec.no_repeat_ngram = 8, saved_decoding, 0
    assert (out / CATALOG_FILE).is_file() and (out / "pecrs_config.json").is_file()
    back = Recommender.from_pretrained(out, cache_dir=False)   # catalog from the saved copy
    assert back.items == rec.items and back.m_inference == 10 and back.decoding == "greedy"
    assert back.no_repeat_ngram == 3
    assert Recommender.from_pretrained(out, cache_dir=False, no_repeat_ngram=0).no_repeat_ngram == 0
    back.no_repeat_ngram = 0
    assert torch.allclose(back.vectors, rec.vectors, atol=1e-6)
    back.m_inference = rec.m_inference
    assert [r.item.id for r in back.recommend(TURNS, k=5)] == [r.item.id for r in rec.recommend(TURNS, k=5)]
    assert back.respond(TURNS) == rec.respond(TURNS, decoding="greedy")


def test_faiss_index_in_the_recommender(run):
    run_dir, items = run
    exact = Recommender.from_pretrained(run_dir, catalog=items, cache_dir=False)
    approx = Recommender.from_pretrained(run_dir, catalog=items, cache_dir=False, index="faiss")
    assert isinstance(approx.index, FaissIndex) and isinstance(exact.index, ExactIndex)
    # With 12 items every item is re-scored exactly, so the rankings agree.
    assert [r.item.id for r in approx.recommend(TURNS, k=6)] == [r.item.id for r in exact.recommend(TURNS, k=6)]


def test_lenient_catalog_reading(tmp_path):
    path = tmp_path / "items.jsonl"
    good = [{"id": "a", "title": "A", "year": 2001}, {"id": 7, "title": "Seven", "genres": ["Drama"]}]
    bad = ['{"id": "b"', '{"id": "c"}', '{"id": "d", "title": "D", "year": "1999"}', '[1, 2]',
           json.dumps({"id": "a", "title": "dup"}), json.dumps({"title": "no id"})]
    more = [json.dumps({"id": f"m{k}", "title": f"More {k}"}) for k in range(5)]
    path.write_text("\n".join([json.dumps(good[0]), *bad, "", json.dumps(good[1]), *more]) + "\n")
    items, errors, n_bad = read_items_lenient(path, max_errors=3)
    assert list(items)[:2] == ["a", "7"] and len(items) == 7 and items["7"].genres == ("Drama",)
    assert n_bad == 6 and len(errors) == 3
    assert "malformed JSON" in errors[0] and ":2" in errors[0] and "field 'title'" in errors[1]
    # More bad lines than items: refused, not served with most of the catalog missing.
    path.write_text("\n".join([json.dumps(good[0]), *bad, "", json.dumps(good[1])]) + "\n")
    with pytest.raises(DataError, match=r"most lines are bad, 2 item\(s\) read \(6 bad line\(s\); first: .*:2: malformed JSON"):
        read_items_lenient(path)
    csv = tmp_path / "items.csv"                     # another format: one line may even parse
    csv.write_text("id,title\n1,Alien\n2,Heat\n")
    with pytest.raises(DataError, match=r"no valid items .*a catalog is JSON Lines, one JSON object per line"):
        read_items_lenient(csv)
    path.write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match=r"no valid items \(1 bad line\(s\); first: .*items\.jsonl:1 field 'title'"):
        read_items_lenient(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="the catalog holds no items"):
        read_items_lenient(path)


# ---- retrieval -------------------------------------------------------------------------------

def test_exact_index_ranks_as_the_model_does(rec):
    """The index scores the catalog with Eq. 3's logits as training computes them (angular distance
    per candidate), at the index's temperature."""
    queries = torch.randn(3, rec.vectors.shape[1], generator=torch.Generator().manual_seed(0))
    scores, idx = build_index(rec.vectors, "exact", temperature=0.1).search(queries, 5)
    every_item = rec.vectors.expand(3, *rec.vectors.shape)                      # [B, N, d]
    full = recall_logits(queries, every_item, temperature=0.1)
    ref_scores, ref_idx = full.topk(5, dim=1)
    assert torch.equal(idx, ref_idx) and torch.allclose(scores, ref_scores, atol=1e-4)


def test_evaluation_and_serving_rank_with_one_search(rec, monkeypatch):
    """PECRS.recommend without an index (evaluation) searches with pecrs.retrieval.ExactIndex, the
    index a Recommender over a small catalog serves with: one implementation of the recall step."""
    import pecrs.model

    made = []
    monkeypatch.setattr(pecrs.model, "ExactIndex",
                        lambda *a, **k: made.append(ExactIndex(*a, **k)) or made[-1])
    context = rec._context(rec.turns(TURNS, False))
    served, _ = rec.model.recommend(*context, rec.vectors, m_inference=5, rerank=False, index=rec.index)
    evaluated, _ = rec.model.recommend(*context, rec.vectors, m_inference=5, rerank=False)
    assert isinstance(rec.index, ExactIndex) and len(made) == 1
    assert made[0].temperature == rec.model.config.recall_temperature and torch.equal(served, evaluated)


def test_faiss_index_recall_and_api():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(5000, 32, generator=g)
    queries = torch.randn(8, 32, generator=g)
    exact, approx = ExactIndex(vectors, 0.1), FaissIndex(vectors, 0.1, k_factor=8)
    (_, i1), (s2, i2) = exact.search(queries, 50), approx.search(queries, 50)
    assert i2.shape == (8, 50) and i2.dtype == torch.long and s2.dtype == torch.float32
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i1, i2)) / i1.numel()
    assert recall >= 0.95
    assert torch.all(s2[:, :-1] >= s2[:, 1:] - 1e-6)                       # best first
    # Scores of returned items are exact recall scores.
    exact_of_found = exact.search(queries, 5000)[0]
    assert torch.allclose(s2[:, 0], exact_of_found[:, 0], atol=1e-4) or recall < 1
    assert isinstance(build_index(vectors, "auto", threshold=10_000), ExactIndex)
    assert isinstance(build_index(vectors, "auto", threshold=1000), FaissIndex)
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(vectors, "hnsw")
    # Asking for more than the catalog holds gives the whole catalog, no -1 padding.
    assert approx.search(queries[:1], 6000)[1].min() >= 0


def test_lenient_catalog_reader_reports_bad_bytes_and_deep_json(tmp_path):
    from pecrs.data import DataError
    from pecrs.catalog_source import read_items_lenient

    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"id": "1", "title": "Alien"}\n' + b"[" * 100_000 + b"\n" + b'{"id": "2", "title": "Heat"}\n')
    items, errors, n_bad = read_items_lenient(path)
    assert list(items) == ["1", "2"] and n_bad == 1 and "nested too deeply" in errors[0] and ":2" in errors[0]
    path.write_bytes(b'{"id": "1", "title": "Caf\xe9"}\n')
    with pytest.raises(DataError, match="items.jsonl"):
        read_items_lenient(path)
    # one line of other bytes is one bad line, not the whole catalog
    path.write_bytes(b'{"id": "1", "title": "Alien"}\n{"id": "2", "title": "Caf\xe9"}\n{"id": "3", "title": "Heat"}\n')
    items, errors, n_bad = read_items_lenient(path)
    assert list(items) == ["1", "3"] and n_bad == 1 and "items.jsonl:2: not UTF-8 text: byte 0xe9 at column 26" in errors[0]


def test_serving_keeps_no_user_text_while_a_dataset_encoder_memoises(rec):
    """A server's texts come from users: its encoder tokenises them per call and keeps none (a
    memo would grow with every request); a training encoder memoises the dataset's recurring turns."""
    from pecrs.prepare import dialogue_encoder

    rec.recommend(TURNS, k=2)
    rec.respond([{"role": "seeker", "text": "something else entirely"}])
    assert rec.encoder._text_cache == {}
    training = dialogue_encoder(rec.model, rec.config, rec.item_index)
    training.encode_context(rec.turns(TURNS))
    assert set(training._text_cache) == {t["text"] for t in TURNS}
    assert training.encode_context(rec.turns(TURNS)) == rec.encoder.encode_context(rec.turns(TURNS))


def test_a_reply_ends_at_any_special_token_but_item():
    """SmolLM2's own tokenizer (the shipped model's copy) with eos <|im_start|>, as transformers
    5.17 read it for the GPU run: that model still ends some replies with the instruct backbone's
    <|im_end|>, and a reply must stop there, not run on past it, nor show the token."""
    from transformers import AutoTokenizer

    from pecrs.decoding import strip_special
    from pecrs.pretrained import MODELS_DIR
    from pecrs.tokens import reply_stop_ids, reply_text

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "inspired" / "tokenizer")
    tok.eos_token = tok.pad_token = "<|im_start|>"
    stops = reply_stop_ids(tok)
    ids = lambda t: tok.convert_tokens_to_ids(t)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert stops[:2] == [ids("<|im_start|>"), newline[0]]
    assert {ids(t) for t in ("<|im_end|>", "<|endoftext|>", "[SEP]", "[REC]", "[REC_END]")} <= set(stops)
    assert ids("[ITEM]") not in stops
    generated = tok("You might like [ITEM] tonight<|im_end|>rocket.com<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids("<|im_end|>") in generated
    reply = strip_special([generated], tok.pad_token_id, stops)[0]
    assert reply_text(tok, reply) == "You might like [ITEM] tonight"
    assert reply_text(tok, generated) == "You might like [ITEM] tonightrocket.com"  # stripped, never shown
    # a model trained on INSPIRED's escaped quotes may write one: it reads as the character
    escaped = tok("Try [ITEM] QUOTATION_MARK, IQUOTATION_MARKm sure", add_special_tokens=False)["input_ids"]
    assert reply_text(tok, escaped) == "Try [ITEM] \", I'm sure"


def test_a_checkpoint_keeps_the_token_roles_it_was_trained_with(tmp_path):
    """A checkpoint's saved eos/pad win over the backbone's reading of them, so a model trained to
    end replies with one token is evaluated and served with it (pecrs.pretrained.adopt_token_roles)."""
    from pecrs.pretrained import load_pretrained

    run_dir, _ = make_tiny_run(tmp_path)
    config_path = run_dir / "best" / "tokenizer" / "tokenizer_config.json"
    saved = json.loads(config_path.read_text())
    saved["eos_token"] = saved["pad_token"] = "[REC_END]"   # any token of the vocabulary other than the backbone's
    config_path.write_text(json.dumps(saved))
    model, _ = load_pretrained(run_dir / "best")
    rec_end = model.tokenizer.convert_tokens_to_ids("[REC_END]")
    assert model.tokenizer.eos_token_id == model.tokenizer.pad_token_id == rec_end
    assert model.end_of_turn_ids[0] == rec_end and model.causal_lm.config.pad_token_id == rec_end


def test_a_catalog_given_in_python_is_checked_as_a_file_would_be():
    """A dict or list of Items once went in unchecked: an empty dict failed inside the encoder, a
    key other than the item's id made recommendations return ids no later turn could use."""
    from pecrs.catalog_source import resolve_catalog

    good = toy_items(3)
    items, report = resolve_catalog({i.id: i for i in good}, None, None)
    assert list(items) == [i.id for i in good] and report.source == "<dict>"
    for catalog, message in [({}, "holds no items"), ([], "holds no items"),
                             ({"a": "not an item"}, "catalog['a']: expected an Item or an items.jsonl object, got str"),
                             ([{"id": "d1"}], "catalog[0] field 'title': missing required field"),
                             ({"k": good[0]}, f"catalog['k']: a catalog dict is keyed by item id; this key holds item '{good[0].id}'"),
                             ([good[0], Item(id="x", title=" ")], "catalog[1] field 'title': expected a non-empty string"),
                             ([good[0], good[0]], f"catalog[1]: duplicate item id '{good[0].id}'")]:
        with pytest.raises(DataError) as e:
            resolve_catalog(catalog, None, None)
        assert message in str(e.value)
    with pytest.raises(TypeError, match="catalog= takes an items.jsonl path, .* got int"):
        resolve_catalog(5, None, None)
    assert resolve_catalog([Item(id=7, title="Seven")], None, None)[0] == {"7": Item(id="7", title="Seven")}
    # Lines of items.jsonl as dicts, as a practitioner holds a catalog in Python.
    assert resolve_catalog([{"id": "b1", "title": "Dune", "year": 1965, "genres": ["Sci-Fi"]}], None, None)[0] == \
        {"b1": Item(id="b1", title="Dune", year=1965, genres=("Sci-Fi",))}


def test_save_pretrained_never_replaces_a_training_checkpoint_nor_its_source(run, rec, tmp_path):
    """`pecrs export`'s rule (pretrained.check_save_destination): another run's best/, a last/ with
    its trainer state and the checkpoint the recommender came from were once replaced silently."""
    import shutil

    run_dir, _ = run
    other = tmp_path / "other"
    shutil.copytree(run_dir / "best", other / "best")
    shutil.copytree(run_dir / "best", other / "last")
    (other / "last" / "trainer_state.pt").write_bytes(b"optimizer and scheduler")
    mine = rec.save_pretrained(tmp_path / "mine")
    loaded = Recommender.from_pretrained(mine, cache_dir=False)

    def snapshot():
        return {p: p.read_bytes() for root in (run_dir, tmp_path) for p in sorted(root.rglob("*")) if p.is_file()}

    before = snapshot()
    for saver, destination, message in ((rec, other / "best", "is a training checkpoint"),
                                        (rec, other / "last", "is a training checkpoint"),
                                        (rec, run_dir / "best", "which is being saved from"),
                                        (rec, run_dir, "which is being saved from"),
                                        (loaded, mine, "which is being saved from")):
        with pytest.raises(ValueError, match="choose another folder") as e:
            saver.save_pretrained(destination)
        assert str(destination) in str(e.value) and message in str(e.value)
    assert snapshot() == before   # nothing replaced, nothing lost
    again = rec.save_pretrained(tmp_path / "mine")   # over an earlier save: replaced, as the docs show
    assert Recommender.from_pretrained(again, cache_dir=False).report.vectors_from_cache


def test_a_failed_save_keeps_the_earlier_save_whole(rec, tmp_path, monkeypatch):
    """The catalog and vectors are written inside the atomic save: a save that fails writing them
    leaves the earlier save as it was, not a folder without its catalog."""
    import pecrs.recommender

    first = rec.save_pretrained(tmp_path / "mine")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pecrs.recommender, "save_vectors", full_disk)
    with pytest.raises(OSError, match="No space left"):
        rec.save_pretrained(first)
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def test_a_large_catalog_encoded_quietly_is_warned_of(run, monkeypatch, caplog):
    """A library call that encodes a large catalog without a progress bar warns once (it may
    run for hours on a CPU); with progress=True the bar says it, and no warning."""
    import logging

    import pecrs.recommender

    run_dir, items = run
    monkeypatch.setattr(pecrs.recommender, "QUIET_ENCODING_WARNING", 5)   # the toy catalog counts as large
    with caplog.at_level(logging.WARNING, logger="pecrs.recommender"):
        Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)
    assert "catalog items: a few items a second on a CPU" in caplog.text and "progress=True" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pecrs.recommender"):
        Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False, progress=True)
    assert "a few items a second" not in caplog.text
