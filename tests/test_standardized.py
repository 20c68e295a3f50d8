"""The standardized ReDial protocol (pecrs.standardized; Kostric & Balog, SIGIR '26): every rule on
hand-made conversations, the collection counts on the official test file, and
`pecrs evaluate --protocol standardized` end to end on a tiny random checkpoint."""
import json
import re

import numpy as np
import pytest

from pecrs import standardized as S
from pecrs.cli import main
from pecrs.data import ITEM, RECOMMENDER, SEEKER, DataError
from pecrs.testing import make_tiny_run

SEEKER_ID, REC_ID = 10, 20


def conv(cid, messages, mentions, questions=None, seeker=SEEKER_ID, rec=REC_ID):
    """A ReDial conversation; messages are (who, text) with who "S" (seeker) or "R" (recommender)."""
    return {"conversationId": str(cid), "initiatorWorkerId": seeker, "respondentWorkerId": rec,
            "movieMentions": {k: f"Movie {k} (2000)" for k in mentions},
            "initiatorQuestions": {k: {"suggested": 1, "liked": liked, "seen": seen}
                                   for k, (liked, seen) in (questions or {}).items()},
            "respondentQuestions": {},
            "messages": [{"senderWorkerId": rec if who == "R" else seeker, "text": text, "messageId": i}
                         for i, (who, text) in enumerate(messages)]}


def write(path, convs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in convs), encoding="utf-8")
    return path


# Conversation A pins the mention, context, ground-truth, fresh and recency rules:
A = conv("A", [
    ("R", "Hi! Have you seen @1?"),              # m0: first message, never an instance
    ("S", "I loved @1 and @2, not @77 or @12"),  # m1: seeker; @77 not in movieMentions, @12 is not @1
    ("R", "Try @4 or @2"),                       # m2: instance, GT (4, 2), fresh (4,)
    ("R", "Also @4 and @4 again, or @5"),        # m3: instance, GT (4, 5) (4 once), fresh (5,)
    ("S", "@6 sounds good"),                     # m4: seeker
    ("R", "How about @1"),                       # m5: instance, GT (1,), fresh () -> not in dedup
    ("R", "bye"),                                # m6: no mention
], mentions=["1", "2", "4", "5", "6"],
    questions={"4": (1, 1), "5": (2, 1), "2": (0, 0), "1": (0, 1), "6": (1, 1)})
# B: mentions only by the seeker -> no instance, so not in the SR/RDL denominators.
B = conv("B", [("S", "I like @3"), ("R", "Cool, me too"), ("S", "@3 is great")], mentions=["3"],
         questions={"3": (1, 1)})
# D: the respondent speaks second but has the lower worker id; rewards 0 (not liked/seen, did not say).
D = conv("D", [("S", "Something like @7?"), ("R", "@8 and @9"), ("S", "ok"), ("R", "or @7")],
         mentions=["7", "8", "9"], questions={"8": (0, 0), "9": (2, 2), "7": (1, 1)}, seeker=5, rec=3)


@pytest.fixture
def collection(tmp_path):
    return S.load_collection(write(tmp_path / "official" / "test_data.jsonl", [A, B, D]))


def test_mention_detection_only_ids_of_the_conversation():
    ids = {"1", "2"}
    assert S.message_mentions("@1 and @2 and @1", ids) == ("1", "2", "1")   # repeats kept, text order
    assert S.message_mentions("@3 @12 @21 email@x 1 @ 2", ids) == ()        # other ids, longer numbers
    assert S.message_mentions("@2, (@1)", ids) == ("2", "1")


def test_instances_context_rule_and_ground_truth(collection):
    got = [(collection.conversations[i.conversation].id, i.message_index, i.ground_truth, i.fresh)
           for i in collection.instances]
    assert got == [("A", 2, ("4", "2"), ("4",)), ("A", 3, ("4", "5"), ("5",)), ("A", 5, ("1",), ()),
                   ("D", 1, ("8", "9"), ("8", "9")), ("D", 3, ("7",), ())]
    assert [c.n_messages for c in collection.conversations] == [7, 3, 4]
    full, dedup = collection.variant("full"), collection.variant("dedup")
    assert [len(full), sum(len(g) for _, g in full)] == [5, 8]
    assert [len(dedup), sum(len(g) for _, g in dedup)] == [3, 4]
    assert [i for i, _ in dedup] == [0, 1, 3]
    # --max-samples N keeps whole conversations: the first instance is in A, so all of A's three.
    part = S.restrict(collection, 1)
    assert (len(part.instances), [c.id for c in part.conversations]) == (3, ["A"])
    assert S.restrict(collection, 4).instances == collection.instances


def test_naive_baseline_is_most_recent_first(collection):
    assert [i.earlier for i in collection.instances] == [
        ("2", "1"), ("2", "4", "1"), ("6", "5", "4", "2", "1"), ("7",), ("9", "8", "7")]
    codes = S.item_codes(collection)
    ranked = S.naive_ranking(collection, codes, k=3)
    back = {v: k for k, v in codes.items()}
    assert [[back.get(int(x)) for x in row] for row in ranked] == [
        ["2", "1", None], ["2", "4", "1"], ["6", "5", "4"], ["7", None, None], ["9", "8", "7"]]


def test_naive_baseline_numbers_by_hand(collection):
    out = S.evaluate_naive(collection, catalog=[str(i) for i in range(1, 9)])
    full, dedup = out["full"], out["dedup"]
    # Mentions: A2 {4: no (not earlier), 2: rank 1}; A3 {4: rank 2, 5: no}; A5 {1: rank 5};
    # D1 {8, 9: not earlier}; D3 {7: rank 3}. 8 mentions.
    assert full["recall@1"] == pytest.approx(1 / 8)
    assert full["recall@10"] == full["recall@50"] == pytest.approx(4 / 8)
    # Top-1 rewards: A2 top 2 in GT, liked 0 seen 0 -> 0; A3 top 2 not GT; A5 top 6 not GT;
    # D1 empty; D3 top 9 not GT. No success, no reward.
    assert (full["sr"], full["rdl"], full["n_dialogues"]) == (0.0, 0.0, 2)
    assert (dedup["recall@1"], dedup["recall@50"], dedup["sr"], dedup["rdl"]) == (0.0, 0.0, 0.0, 0.0)
    assert (full["n_instances"], full["n_mentions"], dedup["n_instances"], dedup["n_mentions"]) == (5, 8, 3, 4)
    assert full["n_missing_from_catalog"] == 1 and dedup["n_missing_from_catalog"] == 1   # movie 9
    assert S.evaluate_naive(collection)["full"]["n_missing_from_catalog"] is None


def ranking(codes, rows, k=4):
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = [codes[m] for m in row]
    return out


def test_recall_sr_rdl_arithmetic(collection):
    codes = S.item_codes(collection, catalog=[str(i) for i in range(20)])
    ranked = ranking(codes, [["4", "0", "2"],        # A2: 4 at 1 (liked -> 1.0), 2 at 3
                             ["5", "4"],             # A3: 5 at 1 (seen, liked 2 -> 0.5), 4 at 2
                             ["1"],                  # A5: 1 at 1 (seen, not liked -> 0.5)
                             ["8", "0", "0", "9"],   # D1: 8 at 1 but liked 0 seen 0 -> 0; 9 at 4
                             ["6"]])                 # D3: 6 liked by the seeker of A only, not GT -> 0
    full = S.score(collection, ranked, codes, "full", catalog=set(codes))
    assert full["recall@1"] == pytest.approx(4 / 8)        # 4, 5, 1, 8
    assert full["recall@10"] == pytest.approx(7 / 8)       # + 2, 4, 9; 7 missed
    assert full["sr"] == pytest.approx(1 / 2)              # A succeeds, D does not
    assert full["rdl"] == pytest.approx(((1.0 + 0.5 + 0.5) / 7 + 0.0 / 4) / 2)
    dedup = S.score(collection, ranked, codes, "dedup", catalog=set(codes))
    # Dedup: A2 {4} top-1 hit (1.0), A3 {5} top-1 hit (0.5), D1 {8, 9}: 8 top-1 (reward 0).
    assert dedup["recall@1"] == pytest.approx(3 / 4) and dedup["recall@10"] == pytest.approx(1.0)
    assert dedup["sr"] == pytest.approx(1 / 2)
    assert dedup["rdl"] == pytest.approx(((1.0 + 0.5) / 7 + 0.0) / 2)
    assert full["n_missing_from_catalog"] == 0


def test_seen_without_like_and_liked_without_seen(tmp_path):
    # liked=1 gives 1.0 whatever seen says; seen=1 with liked 0 or 2 gives 0.5; seen 2 / liked 2 give 0.
    E = conv("E", [("S", "hi"), ("R", "@1"), ("R", "@2"), ("R", "@3"), ("R", "@4")],
             mentions=["1", "2", "3", "4"], questions={"1": (1, 0), "2": (0, 1), "3": (2, 1), "4": (2, 2)})
    c = S.load_collection(write(tmp_path / "t.jsonl", [E]))
    codes = S.item_codes(c)
    out = S.score(c, ranking(codes, [["1"], ["2"], ["3"], ["4"]]), codes)
    assert out["rdl"] == pytest.approx((1.0 + 0.5 + 0.5 + 0.0) / 5) and out["sr"] == 1.0
    only_unsaid = S.score(c, ranking(codes, [["2"], ["1"], ["1"], ["4"]]), codes)  # only the 4th hits
    assert (only_unsaid["sr"], only_unsaid["rdl"], only_unsaid["recall@1"]) == (0.0, 0.0, 0.25)


def test_recall_uses_the_cutoffs(collection):
    codes = S.item_codes(collection)
    rows = [[f"x{j}" for j in range(60)] for _ in collection.instances]
    codes = {**codes, **{f"x{j}": 1000 + j for j in range(60)}}
    for row, pos, movie in ((0, 1, "4"), (1, 10, "5"), (3, 49, "9")):
        rows[row][pos] = movie
    ranked = ranking(codes, rows, k=60)
    out = S.score(collection, ranked, codes, "full")
    assert (out["recall@1"], out["recall@10"], out["recall@50"]) == (0.0, pytest.approx(1 / 8), pytest.approx(3 / 8))


def test_bad_input_names_file_line_and_field(tmp_path):
    bad = json.loads(json.dumps(A))
    bad["initiatorQuestions"]["4"]["liked"] = 3
    path = write(tmp_path / "t.jsonl", [B, bad])
    with pytest.raises(DataError, match=r"t\.jsonl:2 field 'initiatorQuestions\.4\.liked'"):
        S.load_collection(path)
    no_messages = {k: v for k, v in A.items() if k != "messages"}
    with pytest.raises(DataError, match=r":1 field 'messages'"):
        S.load_collection(write(tmp_path / "u.jsonl", [no_messages]))
    # An empty conversation is a broken line, as for the training reader (tests/test_data.py).
    with pytest.raises(DataError, match=r"e\.jsonl:2 field 'messages': empty dialogue"):
        S.load_collection(write(tmp_path / "e.jsonl", [B, {**A, "conversationId": "E", "messages": []}]))
    (tmp_path / "v.jsonl").write_text(json.dumps(A) + "\n{oops\n")
    with pytest.raises(DataError, match=r"v\.jsonl:2: malformed JSON"):
        S.load_collection(tmp_path / "v.jsonl")
    stranger = json.loads(json.dumps(A))
    stranger["messages"][1]["senderWorkerId"] = 99
    with pytest.raises(DataError, match=r"messages\[1\]\.senderWorkerId"):
        S.load_collection(write(tmp_path / "w.jsonl", [stranger]))
    with pytest.raises(DataError, match="duplicate conversationId 'A'"):
        S.load_collection(write(tmp_path / "x.jsonl", [A, A]))
    with pytest.raises(DataError, match="no ReDial test_data.jsonl"):
        S.load_collection(tmp_path / "nowhere")


def test_cli_baseline_and_errors(tmp_path, capsys):
    folder = tmp_path / "redial"
    write(folder / "official" / "test_data.jsonl", [A, B, D])
    (folder / "official" / "movies_with_mentions.csv").write_text(
        "movieId,movieName,nbMentions\n" + "".join(f"{i},Movie {i} (2000),1\n" for i in range(1, 9)))
    assert main(["baseline", "naive", str(folder), "--protocol", "standardized", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"full", "dedup"}
    assert out == S.evaluate_naive(S.load_collection(folder), [str(i) for i in range(1, 9)])
    for variant in out.values():
        for key in ("recall@1", "recall@10", "recall@50", "sr", "rdl"):
            assert 0.0 <= variant[key] <= 1.0
    assert out["full"]["n_missing_from_catalog"] == 1
    # --max-samples: the instances `pecrs evaluate --protocol standardized --max-samples N` scores.
    assert main(["baseline", "naive", str(folder), "--max-samples", "1", "--json"]) == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut == S.evaluate_naive(S.restrict(S.load_collection(folder), 1), [str(i) for i in range(1, 9)])
    assert cut["full"]["n_instances"] < out["full"]["n_instances"]
    assert main(["baseline", "naive", str(folder / "official" / "test_data.jsonl")]) == 0   # a file; a table
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["full", "dedup"] and lines[3].split() == ["recall@1", "0.1250", "0.0000"]
    assert main(["baseline", "naive", str(tmp_path / "missing"), "--json"]) == 2
    assert "test_data.jsonl" in capsys.readouterr().err


# ---- the official test file --------------------------------------------------------------------

def _brute_force_naive(path):
    """An independent, loop-by-loop reading of the protocol for the naive baseline."""
    n = hits1 = hits10 = 0
    success, rdl = [], []
    for line in open(path, encoding="utf-8"):
        d = json.loads(line)
        mm, q = d["movieMentions"], d["initiatorQuestions"] or {}
        order, total, ok, has = [], 0.0, False, False
        for i, m in enumerate(d["messages"]):
            ids = [x for x in re.findall(r"@(\d+)", m["text"]) if x in mm]
            gt = list(dict.fromkeys(ids))
            if m["senderWorkerId"] == d["respondentWorkerId"] and i > 0 and gt:
                has, rank = True, order[::-1]
                n += len(gt)
                hits1 += sum(g in rank[:1] for g in gt)
                hits10 += sum(g in rank[:10] for g in gt)
                if rank and rank[0] in gt:
                    a = q.get(rank[0], {})
                    r = 1.0 if a.get("liked") == 1 else 0.5 if a.get("seen") == 1 else 0.0
                    total, ok = total + r, ok or r > 0
            for x in ids:
                if x in order:
                    order.remove(x)
                order.append(x)
        if has:
            success.append(ok)
            rdl.append(total / len(d["messages"]))
    return n, hits1 / n, hits10 / n, sum(success) / len(success), sum(rdl) / len(rdl)


def test_counts_on_the_official_test_file(shared_datasets):
    c = S.load_collection(shared_datasets / "redial")
    full, dedup = c.variant("full"), c.variant("dedup")
    assert (len(full), sum(len(g) for _, g in full)) == (4198, 4975)
    assert (len(dedup), sum(len(g) for _, g in dedup)) == (3838, 4472)


def test_naive_baseline_on_the_official_test_file(shared_datasets):
    folder = shared_datasets / "redial"
    out = S.evaluate_naive(S.load_collection(folder), S.catalog_ids(folder))
    n, r1, r10, sr, rdl = _brute_force_naive(folder / "official" / "test_data.jsonl")
    full = out["full"]
    assert (full["n_mentions"], full["n_missing_from_catalog"]) == (n, 0)
    assert full["recall@1"] == pytest.approx(r1) and full["recall@10"] == pytest.approx(r10)
    assert full["sr"] == pytest.approx(sr) and full["rdl"] == pytest.approx(rdl)
    # Every repeated mention is a hit somewhere in the list, so R@50 is the share of repeats.
    assert full["recall@50"] == pytest.approx((4975 - 4472) / 4975)
    assert out["dedup"]["recall@50"] == 0.0 and out["dedup"]["sr"] == 0.0


# ---- a model -----------------------------------------------------------------------------------

def test_context_turns_layout():
    c = S.parse_conversation(conv("C", [("S", "I liked @1 and @2"), ("S", "and @77 too"), ("R", "ok"),
                                        ("R", "Try @3")], mentions=["1", "2", "3"]), {"path": "x", "line": 1})
    turns = S.context_turns(c, 3, {"1": 0, "3": 1})   # movie 2 is not in the catalog
    assert [(t.role, t.text, t.items) for t in turns] == [
        (SEEKER, f"I liked {ITEM} and Movie 2 and @77 too", ("1",)), (RECOMMENDER, "ok", ())]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """make_tiny_run's random tiny-llama checkpoint, whose dataset folder is a small ReDial release:
    the toy catalog (ids 0-11) and conversations A, B, D plus one mentioning movie 50 (not in it)."""
    root = tmp_path_factory.mktemp("standardized")
    run_dir, items = make_tiny_run(root)
    F = conv("F", [("S", "Anything like @0?"), ("R", "@50 or @11"), ("S", "Seen @11, liked it"), ("R", "Then @10")],
             mentions=["0", "50", "10", "11"], questions={"50": (1, 1), "11": (1, 1), "10": (2, 0)})
    write(items.parent / "official" / "test_data.jsonl", [A, B, D, F])
    return run_dir, items.parent


def test_evaluate_standardized_end_to_end(tiny_run, tmp_path, capsys):
    run_dir, data = tiny_run
    out_file = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--protocol", "standardized", "--json", "--device", "cpu",
                 "--output", str(out_file)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"full", "dedup"}
    assert (out["full"]["n_instances"], out["full"]["n_mentions"]) == (7, 11)
    assert (out["dedup"]["n_instances"], out["dedup"]["n_mentions"]) == (5, 7)
    assert out["full"]["n_missing_from_catalog"] == 1 and out["dedup"]["n_missing_from_catalog"] == 1  # @50
    for variant in out.values():
        for key in ("recall@1", "recall@10", "recall@50", "sr", "rdl"):
            assert 0.0 <= variant[key] <= 1.0
    saved = json.loads(out_file.read_text())
    assert saved["protocol"] == "standardized" and saved["full"] == out["full"]


def test_model_ranking_is_the_recommenders(tiny_run, tmp_path):
    """Each instance is ranked by the model's one ranking path: the same top items as
    `Recommender.recommend` on that instance's context, and scored from those rankings."""
    from pecrs.recommender import Recommender
    from pecrs.prepare import prepare

    run_dir, data = tiny_run
    rec = Recommender.from_pretrained(run_dir, catalog=data / "items.jsonl", device="cpu", cache_dir=False)
    setup = prepare(rec.config, model=rec.model, dataset=str(data), device="cpu")
    collection = S.load_collection(data)
    ranked = S.rank_instances(setup.model, setup.store, setup.encoder, collection,
                              m_inference=rec.m_inference, batch_size=3)
    assert ranked.shape == (7, rec.m_inference)
    for row, inst in zip(ranked, collection.instances):
        turns = S.context_turns(collection.conversations[inst.conversation], inst.message_index, rec.item_index)
        expected = [r.item.id for r in rec.recommend(list(turns), k=rec.m_inference)]
        assert [setup.store.ids[i] for i in row] == expected
    codes = S.item_codes(collection, setup.store.ids)
    assert codes["50"] >= len(setup.store.ids)
    result = S.evaluate_model(setup.model, setup.store, setup.encoder, collection,
                              m_inference=rec.m_inference, batch_size=3)
    assert result == S.score_all(collection, ranked, codes, setup.store.ids)


def test_bad_bytes_and_deep_json_are_data_errors_naming_the_file(tmp_path):
    from pecrs.data import DataError
    from pecrs.standardized import load_collection

    for name, payload in (("latin1", b'{"conversationId": "caf\xe9"}\n'), ("deep", b"[" * 100_000 + b"\n")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "test_data.jsonl").write_bytes(payload)
        with pytest.raises(DataError, match="test_data.jsonl"):
            load_collection(folder)


def test_the_catalog_csv_is_read_as_the_loaders_read_it(tmp_path):
    """`pecrs baseline naive` takes the catalog ids from movies_with_mentions.csv with the loaders'
    reader: a byte order mark is accepted, a non-UTF-8 byte names the file and line."""
    path = tmp_path / "official" / "movies_with_mentions.csv"
    path.parent.mkdir()
    path.write_bytes("\ufeffmovieId,movieName,nbMentions\n10,Heat (1995),3\n20,Up (2009),1\n".encode())
    assert S.catalog_ids(tmp_path) == ["10", "20"]
    path.write_bytes(b"movieId,movieName,nbMentions\n10,Heat (1995),3\n20,Am\xe9lie (2001),1\n")
    with pytest.raises(DataError, match=r"movies_with_mentions\.csv:3: not UTF-8"):
        S.catalog_ids(tmp_path)
