"""Items a recommendation must not be (beyond the paper): `pecrs.retrieval.search_excluding`, the
`exclude` argument of `PECRS.recommend` and `Recommender.recommend / respond`, and
inference.exclude_mentioned (never an item the conversation mentions) in serving and evaluation."""
import argparse

import pytest
import torch

from pecrs.config import InferenceConfig, RunConfig
from pecrs.data import DataError
from pecrs.recommender import Recommender
from pecrs.retrieval import ExactIndex, search_excluding
from pecrs.testing import TURNS, make_tiny_run

MENTIONED = "3"   # the item TURNS mentions


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("exclusion"))


@pytest.fixture(scope="module")
def rec(run):
    run_dir, items = run
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


def test_search_excluding_is_the_top_m_of_the_rest():
    torch.manual_seed(0)
    vectors, queries = torch.randn(40, 8), torch.randn(3, 8)
    index = ExactIndex(vectors)
    exclude = torch.tensor([[5, -1, -1], [0, 1, 2], [-1, -1, -1]])
    scores, top = search_excluding(index.search, queries, 10, exclude)
    full_scores, full = index.search(queries, 40)
    for row in range(3):
        banned = set(exclude[row].tolist())
        expected = [i for i in full[row].tolist() if i not in banned][:10]
        assert top[row].tolist() == expected
        assert scores[row].tolist() == pytest.approx(full_scores[row][[i not in banned for i in
                                                                        full[row].tolist()]][:10].tolist())
    # Nothing to exclude (None, or padding only): the search itself, not a wider one cut down.
    calls = []
    spy = lambda q, m: calls.append(m) or index.search(q, m)  # noqa: E731
    for nothing in (None, torch.full((3, 5), -1)):
        assert torch.equal(search_excluding(spy, queries, 10, nothing)[1], index.search(queries, 10)[1])
    assert calls == [10, 10]


def test_search_excluding_on_a_small_catalog_keeps_each_row_its_own_items():
    """Rows with different exclusions in one batch: each keeps what is left to it, -1 after,
    whatever the other rows exclude (batch 1, as served, gives the same row)."""
    torch.manual_seed(1)
    small, queries = ExactIndex(torch.randn(4, 8)), torch.randn(2, 8)
    exclude = torch.tensor([[0, 2, 3], [1, -1, -1]])
    scores, top = search_excluding(small.search, queries, 10, exclude)
    assert top.shape == (2, 4)
    assert top[0].tolist()[1:] == [-1, -1, -1] and top[0, 0].item() == 1
    assert sorted(top[1].tolist()[:3]) == [0, 2, 3] and top[1, 3].item() == -1
    assert scores[0, 1:].isneginf().all() and scores[1, :3].isfinite().all()
    for row in range(2):
        alone = search_excluding(small.search, queries[row:row + 1], 10, exclude[row:row + 1])[1]
        assert alone[0].tolist() == top[row].tolist()


def test_model_ranking_without_the_excluded_items_keeps_the_order(rec):
    """Candidates are re-ranked independently (§3.5), so excluding items removes them from the
    ranking and leaves the others' order as it was (M = the whole catalog)."""
    ids, slots, length = rec._context(rec.turns(TURNS))
    n = len(rec)
    top, scores = rec.model.recommend(ids, slots, length, rec.vectors, m_inference=n)
    banned = [top[0, 0].item(), top[0, 4].item()]
    top_x, scores_x = rec.model.recommend(ids, slots, length, rec.vectors, m_inference=n,
                                          exclude=torch.tensor([banned + [-1]]))
    kept = [i not in banned for i in top[0].tolist()]
    # M = the whole catalog: 2 fewer items are left, so the row ends in two -1s scored -inf.
    assert top_x[0].tolist() == top[0][kept].tolist() + [-1, -1]
    assert scores_x[0, :-2].tolist() == pytest.approx(scores[0][kept].tolist(), abs=1e-5)
    assert scores_x[0, -2:].isneginf().all()


def test_recommender_exclude_argument(rec):
    first = [r.item.id for r in rec.recommend(TURNS, k=12)]
    banned = first[:2]
    got = [r.item.id for r in rec.recommend(TURNS, k=12, exclude=banned)]
    assert got == first[2:]
    # respond injects the top item of the same ranking (k = 1: M = m_inference candidates).
    top1 = rec.recommend(TURNS, k=1, exclude=banned)[0].item
    assert rec.respond(TURNS, exclude=banned, decoding="greedy").recommended[0] == top1 and top1.id not in banned
    with pytest.raises(DataError, match=r"field 'exclude\[1\]'.*unknown item id 'nope'"):
        rec.recommend(TURNS, exclude=["1", "nope"])
    with pytest.raises(DataError, match=r"field 'exclude\[0\]'.*item ids are strings, got int 3"):
        rec.recommend(TURNS, exclude=[3])
    with pytest.raises(DataError, match=r"field 'exclude\[0\]'.*item ids are strings"):
        rec.recommend(TURNS, exclude=[["x"]])
    with pytest.raises(DataError, match="field 'exclude'.*list of item ids"):
        rec.recommend(TURNS, exclude="3")
    with pytest.raises(DataError, match="every item of the catalog is excluded"):
        rec.respond(TURNS, exclude=list(rec.items))


def test_exclude_mentioned_drops_what_the_dialogue_mentions(run, rec):
    run_dir, items = run
    ranked = [r.item.id for r in rec.recommend(TURNS, k=12)]
    fresh = Recommender(rec.model, rec.config, rec.items, rec.vectors, exclude_mentioned=True)
    assert [r.item.id for r in fresh.recommend(TURNS, k=12)] == [i for i in ranked if i != MENTIONED]
    assert fresh.respond(TURNS).recommended[0].id != MENTIONED
    with pytest.raises(Exception, match="inference.exclude_mentioned"):
        Recommender(rec.model, rec.config, rec.items, rec.vectors, exclude_mentioned="sometimes")


def test_exclude_mentioned_is_saved_with_the_model(rec, tmp_path):
    fresh = Recommender(rec.model, rec.config, rec.items, rec.vectors, exclude_mentioned=True)
    loaded = Recommender.from_pretrained(fresh.save_pretrained(tmp_path / "m"), device="cpu", cache_dir=False)
    assert loaded.exclude_mentioned is True
    assert Recommender.from_pretrained(tmp_path / "m", device="cpu", cache_dir=False,
                                       exclude_mentioned=False).exclude_mentioned is False


def test_http_exclude(rec):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pecrs.serve import create_app

    with TestClient(create_app(rec)) as client:
        first = [it["id"] for it in client.post("/recommend", json={"turns": TURNS, "k": 12}).json()["items"]]
        r = client.post("/recommend", json={"turns": TURNS, "k": 12, "exclude": first[:3]})
        assert [it["id"] for it in r.json()["items"]] == first[3:]
        top1 = client.post("/recommend", json={"turns": TURNS, "k": 1, "exclude": first[:1]}).json()["items"][0]
        r = client.post("/respond", json={"turns": TURNS, "exclude": first[:1], "decoding": "greedy"})
        assert r.json()["recommended"][0]["id"] == top1["id"] != first[0]
        bad = client.post("/recommend", json={"turns": TURNS, "exclude": ["nope"]})
        assert bad.status_code == 400 and "exclude" in bad.json()["detail"]
        assert client.get("/health").json()["exclude_mentioned"] is False


def test_evaluation_excludes_the_context_items_only_when_asked(rec, run):
    """evaluate / recall_only pass each batch's context item slots as `exclude` when
    inference.exclude_mentioned is set, and nothing otherwise."""
    from pecrs.evaluate import recall_only
    from pecrs.catalog import ItemStore
    from pecrs.samples import make_samples
    from pecrs.data import Dialogue, Turn

    dialogue = Dialogue("d", tuple(Turn(t["role"], t["text"], tuple(t.get("items", ()))) for t in TURNS)
                        + (Turn("recommender", "Try [ITEM]", ("3",)), ))
    samples = [s for s in make_samples([dialogue]) if s.target is not None]
    store = ItemStore(rec.item_list, rec.model.tokenizer, rec.config.model.item_fields,
                      rec.config.model.item_max_tokens)
    calls = []
    recommend = rec.model.recommend
    rec.model.recommend = lambda *a, **k: calls.append(k.get("exclude")) or recommend(*a, **k)
    try:
        plain = recall_only(rec.model, store, rec.encoder, samples, InferenceConfig(m_inference=12))
        fresh = recall_only(rec.model, store, rec.encoder, samples, InferenceConfig(m_inference=12,
                                                                                  exclude_mentioned=True))
    finally:
        del rec.model.recommend
    assert calls[0] is None
    assert calls[1].shape[0] == 2 and rec.item_index[MENTIONED] in calls[1].flatten().tolist()
    # Both samples target item 3; the second's context mentions it, so excluded it is never
    # recommended there, while the first (no earlier mention) still finds it among 12 items.
    assert plain["recall@50"] == 1.0 and fresh["recall@50"] == 0.5


def test_cli_flag_sets_the_inference_setting():
    from pecrs.cli.train_eval import _inference_settings

    config = RunConfig()
    assert _inference_settings(config, argparse.Namespace(exclude_mentioned=True)).exclude_mentioned is True
    config = RunConfig()
    assert _inference_settings(config, argparse.Namespace(exclude_mentioned=None)).exclude_mentioned is False


def test_http_link_titles(rec):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pecrs.serve import create_app

    typed = [{"role": "seeker", "text": "I loved Movie 3"}]
    mentioned = [{"role": "seeker", "text": "I loved [ITEM]", "items": ["3"]}]
    with TestClient(create_app(rec)) as client:
        def ids(turns, **extra):
            return [it["id"] for it in client.post("/recommend", json={"turns": turns, "k": 12, **extra}).json()["items"]]
        assert ids(typed, link_titles=True) == ids(mentioned)
        read = client.post("/recommend", json={"turns": typed, "link_titles": True}).json()["read_as"]
        assert [it["id"] for it in read] == [MENTIONED]
        assert client.post("/recommend", json={"turns": typed}).json()["read_as"] == []
        both = [{"role": "seeker", "text": "[ITEM] and Movie 4", "items": ["1"]}]
        assert [it["id"] for it in client.post("/respond", json={"turns": both, "link_titles": True}).json()["read_as"]] == ["4"]
        # exclude_mentioned per request, over the server's setting (off here).
        assert ids(typed, link_titles=True, exclude_mentioned=True) == [i for i in ids(mentioned) if i != MENTIONED]
        assert ids(typed) == [r.item.id for r in rec.recommend(typed, k=12)]


def test_cli_flags_reach_the_recommender(run, monkeypatch, tmp_path):
    import io

    from pecrs.cli import main

    run_dir, _ = run
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    seen = []
    monkeypatch.setattr("pecrs.chat.chat", lambda rec, **kw: seen.append(
        (rec.exclude_mentioned, kw["exclude_mentioned"], kw["link_titles"])) or 0)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["chat", str(run_dir), "--exclude-mentioned", "--no-link-titles"]) == 0
    assert main(["chat", str(run_dir)]) == 0                          # chat's defaults
    assert main(["chat", str(run_dir), "--no-exclude-mentioned"]) == 0
    assert seen == [(True, True, False), (False, True, True), (False, False, True)]


def test_exclude_mentioned_reaches_past_the_context_window(rec):
    """A movie named long ago (before the last context_max_tokens tokens the model reads) is
    still excluded: exclusion follows the dialogue's mentions, not the model's window."""
    long_turns = [{"role": "seeker", "text": "I loved [ITEM]", "items": [MENTIONED]},
                  {"role": "seeker", "text": "blah " * (4 * rec.config.model.context_max_tokens)}]
    slots = rec.encoder.encode_context(rec.turns(long_turns))[1]
    assert rec.item_index[MENTIONED] not in slots       # the model no longer reads the mention
    ranked = [r.item.id for r in rec.recommend(long_turns, k=12, exclude_mentioned=True)]
    assert MENTIONED not in ranked and len(ranked) == 11


def test_faiss_index_honours_exclusion(rec):
    fast = Recommender(rec.model, rec.config, rec.items, rec.vectors, index="faiss")
    first = [r.item.id for r in fast.recommend(TURNS, k=12)]
    assert [r.item.id for r in fast.recommend(TURNS, k=12, exclude=first[:4])] == first[4:]


def test_length_sorted_batches_give_each_row_its_own_exclusions(rec):
    """Evaluation batches are sorted by context length, so a batch's rows are not the samples'
    order: ranked in one batch or one at a time, each sample excludes its own mentions."""
    from pecrs.catalog import ItemStore
    from pecrs.data import Dialogue, Turn
    from pecrs.evaluate import mentioned_indices, rank_samples
    from pecrs.samples import make_samples

    long = Dialogue("long", (Turn("seeker", "I loved [ITEM] " + "and so on " * 30, ("3",)),
                             Turn("recommender", "Try [ITEM]", ("7",)), Turn("seeker", "seen it"),
                             Turn("recommender", "Then [ITEM]", ("8",))))
    short = Dialogue("short", (Turn("seeker", "[ITEM] was fun", ("5",)), Turn("recommender", "Try [ITEM]", ("6",))))
    samples = [s for s in make_samples([long, short]) if s.target is not None]
    store = ItemStore(rec.item_list, rec.model.tokenizer, rec.config.model.item_fields, rec.config.model.item_max_tokens)
    encoded = rec.encoder.encode_all(samples)
    assert len(encoded[-1].context_ids) < len(encoded[0].context_ids)      # sorting moves "short" first
    exclude = mentioned_indices(samples, store.items)
    vectors = store.all_vectors(rec.model)
    together = rank_samples(rec.model, encoded, vectors, 12, 8, exclude=exclude)
    alone = rank_samples(rec.model, encoded, vectors, 12, 1, exclude=exclude)
    assert (together == alone).all()
    for row, banned in zip(together, exclude):
        assert banned and not set(banned) & set(row.tolist())


def test_samples_with_one_context_and_other_exclusions_are_ranked_apart(rec):
    """Evaluation ranks each distinct context once and copies its ranking to the samples that
    share it (`rank_samples_at`): only when their exclusions agree too. The same context twice,
    excluding the first or the second of its ranking, gives each the other one first."""
    from pecrs.catalog import ItemStore
    from pecrs.data import Dialogue, Turn
    from pecrs.evaluate import rank_samples
    from pecrs.samples import make_samples

    dialogue = Dialogue("d", (Turn("seeker", "I loved [ITEM]", ("3",)), Turn("recommender", "Try [ITEM]", ("6",))))
    sample = [s for s in make_samples([dialogue]) if s.target is not None][0]
    store = ItemStore(rec.item_list, rec.model.tokenizer, rec.config.model.item_fields, rec.config.model.item_max_tokens)
    encoded = rec.encoder.encode_all([sample, sample])
    vectors = store.all_vectors(rec.model)
    first, second = rank_samples(rec.model, encoded[:1], vectors, 12, 8)[0][:2].tolist()
    ranked = rank_samples(rec.model, encoded, vectors, 12, 8, exclude=[[first], [second]])
    assert first not in ranked[0].tolist() and ranked[0][0] == second
    assert second not in ranked[1].tolist() and ranked[1][0] == first


def test_the_same_film_under_two_ids_is_excluded_under_both(run, rec):
    """A catalog listing a film twice (INSPIRED has 11 such pairs): excluding or mentioning one id
    excludes its twin too (pecrs.twins.same_film)."""
    from pecrs.data import Item

    twin = Item("3b", rec.items[MENTIONED].title, rec.items[MENTIONED].year)
    doubled = Recommender(rec.model, rec.config, [*rec.item_list, twin])
    assert doubled.twins == {MENTIONED: ("3b",), "3b": (MENTIONED,)}
    ranked = [r.item.id for r in doubled.recommend(TURNS, k=13, exclude_mentioned=True)]
    assert len(ranked) == 11 and not {MENTIONED, "3b"} & set(ranked)
    assert "3b" not in [r.item.id for r in doubled.recommend(TURNS, k=13, exclude=[MENTIONED])]


def test_http_request_overrides_the_servers_exclusion_setting(rec):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from pecrs.serve import create_app

    server_excludes = Recommender(rec.model, rec.config, rec.items, rec.vectors, exclude_mentioned=True)
    with TestClient(create_app(server_excludes)) as client:
        def ids(**extra):
            return [it["id"] for it in client.post("/recommend", json={"turns": TURNS, "k": 12, **extra}).json()["items"]]
        assert client.get("/health").json()["exclude_mentioned"] is True
        assert MENTIONED not in ids() and len(ids()) == 11
        assert MENTIONED in ids(exclude_mentioned=False) and len(ids(exclude_mentioned=False)) == 12


def test_cli_evaluate_excludes_and_says_so(tmp_path, monkeypatch, capsys):
    import json

    from pecrs.cli import main
    from pecrs.testing import write_jsonl

    run_dir, items = make_tiny_run(tmp_path / "world")
    dialogue = [{"role": "seeker", "text": "I loved [ITEM] and [ITEM]", "items": ["3", "4"]},
                {"role": "recommender", "text": "Then [ITEM]", "items": ["3"]},     # mentioned before
                {"role": "seeker", "text": "more"},
                {"role": "recommender", "text": "Or [ITEM]", "items": ["9"]}]      # new
    write_jsonl(items.parent / "test.jsonl", [{"id": f"t{k}", "turns": dialogue} for k in range(2)])
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    results = {}
    for flag in ("--exclude-mentioned", "--no-exclude-mentioned"):
        out = tmp_path / f"{flag}.json"
        assert main(["evaluate", str(run_dir), "--no-generate", "--no-ppl", "--json", "--device", "cpu", "--m-inference", "12",
                     "--output", str(out), flag]) == 0
        results[flag] = json.loads(out.read_text())
    capsys.readouterr()
    on, off = results["--exclude-mentioned"], results["--no-exclude-mentioned"]
    assert on["exclude_mentioned"] is True and off["exclude_mentioned"] is False
    # Excluded, the target mentioned before is never found (12 items: always, without exclusion).
    assert (off["recall@50"], off["dedup_recall@50"]) == (1.0, 1.0)
    assert (on["recall@50"], on["dedup_recall@50"]) == (0.5, 1.0)


def test_evaluation_refuses_a_context_that_mentions_the_whole_catalog():
    """Under exclude_mentioned such a turn has nothing left to rank: the evaluation would inject a
    padding index as the recommended item. It names the dialogue and turn instead (serving's
    Recommender refuses the same case)."""
    from pecrs.data import Dialogue, Item, Turn
    from pecrs.evaluate import mentioned_indices
    from pecrs.samples import make_samples

    items = [Item(id="a", title="Alpha"), Item(id="b", title="Beta")]
    every = Dialogue("greedy", (Turn("seeker", "[ITEM] and [ITEM]", ("a", "b")), Turn("recommender", "Try [ITEM]", ("a",))))
    some = Dialogue("fine", (Turn("seeker", "[ITEM]", ("a",)), Turn("recommender", "Try [ITEM]", ("b",))))
    assert mentioned_indices(make_samples([some]), items) == [[0]]
    with pytest.raises(DataError, match="dialogue 'greedy' turn 1: .*every item"):
        mentioned_indices(make_samples([some, every]), items)
