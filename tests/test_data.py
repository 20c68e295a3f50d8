"""Loaders, samples and stats: exact counts on the shared datasets, errors on bad input, and
properties of the sample rules on random dialogues."""
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pecrs.cli import main
from pecrs.data import ITEM, RECOMMENDER, ROLES, SEEKER, DataError, Dialogue, Item, Turn
from pecrs.loaders import detect_format, load_dataset, load_dialogues, load_items
from pecrs.samples import make_samples
from pecrs.stats import dataset_stats
from pecrs.testing import TSV_HEADER, tsv_folder, write_jsonl

DATA = Path(__file__).parents[2] / "shared" / "datasets"
needs_data = pytest.mark.skipif(not (DATA / "inspired").is_dir() or not (DATA / "redial").is_dir(),
                                reason="shared datasets not present")


def counts(bundle):
    """split -> (dialogues, turns, instances, instances with a target)."""
    out = {}
    for split, dialogues in bundle.splits.items():
        samples = make_samples(dialogues)
        out[split] = (len(dialogues), sum(len(d.turns) for d in dialogues), len(samples),
                      sum(s.target is not None for s in samples))
    return out


# ---- the real datasets ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inspired():
    return load_dataset(DATA / "inspired")


@pytest.fixture(scope="module")
def redial():
    return load_dataset(DATA / "redial")


@needs_data
def test_inspired_jsonl_counts(inspired):
    assert inspired.fmt == "jsonl" and detect_format(DATA / "inspired") == "jsonl"
    assert len(inspired.items) == 1662
    assert counts(inspired) == {"train": (801, 16982, 8152, 2295), "dev": (99, 2053, 977, 305),
                                "test": (99, 2089, 993, 279)}
    assert inspired.skipped == {}
    # INSPIRED's escaped quotes, read back in 210 turns; none is left
    assert inspired.repaired == {"QUOTATION_MARK read as a quote or apostrophe (turns)": 210}
    assert not any("QUOTATION_MARK" in t.text for split in inspired.splits.values() for d in split for t in d.turns)


@needs_data
def test_inspired_stats_match_table_1(inspired):
    t = dataset_stats(inspired)["totals"]
    # Paper Table 1, INSPIRED row: 999 dialogues, 21,124 utterances, 10,122 recommender
    # utterances (= instances), 7,243 without and 2,879 with a recommendation.
    assert (t["dialogues"], t["utterances"], t["instances"]) == (999, 21124, 10122)
    assert (t["instances_without_rec"], t["instances_with_rec"]) == (7243, 2879)
    assert dataset_stats(inspired)["splits"]["test"]["unique_items"] == 264  # §4.1


@needs_data
def test_inspired_tsv(inspired):
    tsv = load_dataset(DATA / "inspired", fmt="inspired-tsv")
    assert tsv.fmt == "inspired-tsv" and list(tsv.splits) == ["dev", "test"]
    # Same turns as the PECRS files; instances differ by one in dev because PECRS/MESE read only
    # the first digit of [MOVIE_TITLE_nn] (documented in docs/data-format.md).
    assert counts(tsv) == {"dev": (99, 2053, 976, 304), "test": (99, 2089, 993, 274)}
    for split in ("dev", "test"):
        for a, b in zip(inspired.splits[split], tsv.splits[split]):
            assert [t.role for t in a.turns] == [t.role for t in b.turns]
    assert tsv.repaired == {"inspired-tsv: malformed movie_dict parsed leniently (dialogues)": 1,
                            "QUOTATION_MARK read as a quote or apostrophe (turns)": 38}
    assert tsv.skipped["inspired-tsv: movie not in catalog (written as text)"] == 59


def test_escaped_quotes_are_read_back(tmp_path):
    """INSPIRED's QUOTATION_MARK: an apostrophe between letters, a double quote elsewhere; counted,
    and the [ITEM] placeholders and their ids are untouched."""
    from pecrs.data import unescape_quotes
    from pecrs.testing import write_jsonl

    assert unescape_quotes("IQUOTATION_MARKm into QUOTATION_MARKcheesy.QUOTATION_MARK films") == \
        'I\'m into "cheesy." films'
    assert unescape_quotes("QUOTATION_MARK[ITEM]QUOTATION_MARK 2") == '"[ITEM]" 2'
    assert unescape_quotes("plain text") == "plain text"
    write_jsonl(tmp_path / "items.jsonl", [{"id": "1", "title": "Up", "year": 2009}])
    write_jsonl(tmp_path / "test.jsonl", [{"id": "d", "turns": [
        {"role": "seeker", "text": "IQUOTATION_MARKd like QUOTATION_MARK[ITEM]QUOTATION_MARK", "items": ["1"]},
        {"role": "recommender", "text": "Sure"}]}])
    bundle = load_dataset(tmp_path)
    turn = bundle.splits["test"][0].turns[0]
    assert (turn.text, turn.items) == ('I\'d like "[ITEM]"', ("1",))
    assert bundle.repaired == {"QUOTATION_MARK read as a quote or apostrophe (turns)": 1}


@needs_data
def test_redial_pecrs_counts(redial):
    assert redial.fmt == "redial" and detect_format(DATA / "redial") == "redial"
    assert len(redial.items) == 6924
    assert counts(redial) == {"train": (1813, 22428, 11834, 6684),
                              "test": (1342, 15704, 8329, 4751)}
    assert redial.skipped == {"redial: mention not in respondentQuestions (pecrs rule)": 305,
                              "redial: mention not in PECRS item table (pecrs rule)": 686}
    test_items = {i for d in redial.splits["test"] for t in d.turns for i in t.items}
    # 1,917 ids = the paper's 1,872 test items (§4.1) once ids PECRS saw as one movie merge.
    assert len(test_items) == 1917


@needs_data
def test_redial_all_mentions():
    bundle = load_dataset(DATA / "redial", mentions="all")
    assert counts(bundle)["test"] == (1342, 15704, 8403, 4933)
    assert bundle.skipped == {}


@needs_data
def test_cli_stats_json(capsys):
    assert main(["data", "stats", str(DATA / "inspired"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: v["instances"] for k, v in out["splits"].items()} == {"train": 8152, "dev": 977,
                                                                    "test": 993}
    assert out["splits"]["dev"]["dialogues"] == 99 and out["totals"]["instances"] == 10122


@needs_data
def test_cli_stats_text(capsys):
    assert main(["data", "stats", str(DATA / "redial")]) == 0
    out = capsys.readouterr().out
    assert "8,329" in out and "skipped: redial: mention not in PECRS item table" in out


# ---- the project's JSON Lines format: errors name file, line and field ------------------------

ITEMS = [{"id": "1", "title": "Heat", "year": 1995, "actors": ["Al Pacino"], "directors": [],
          "genres": ["Crime"], "plot": "A heist."}, {"id": "2", "title": "Up"}]
GOOD = {"id": "d0", "turns": [{"role": "seeker", "text": "Hi, I liked [ITEM]", "items": ["1"]},
                              {"role": "recommender", "text": "Try [ITEM] and [ITEM]!",
                               "items": ["2", "1"]}]}


def make_folder(tmp_path, dialogues, items=ITEMS):
    write_jsonl(tmp_path / "items.jsonl", items)
    write_jsonl(tmp_path / "train.jsonl", dialogues)
    return tmp_path


def test_jsonl_roundtrip(tmp_path):
    bundle = load_dataset(make_folder(tmp_path, [GOOD]))
    (d,) = bundle.splits["train"]
    assert d.turns[1] == Turn(RECOMMENDER, "Try [ITEM] and [ITEM]!", ("2", "1"))
    assert bundle.items["1"].text() == "Heat [SEP] Al Pacino [SEP]  [SEP] Crime [SEP] A heist."
    assert bundle.items["2"] == Item("2", "Up")
    s = make_samples([d])
    assert [(x.target, x.repeated, x.target_seen_before, x.earlier_items) for x in s] == [
        ("2", False, False, ("1",)), ("1", True, True, ("1",))]


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def with_turn(**changes):
    d = json.loads(json.dumps(GOOD))
    d["turns"][1].update(changes)
    return d


@pytest.mark.parametrize("rows, line, field", [
    ([GOOD, '{"id": "d1", "turns": [}'], 2, None),                     # malformed JSON
    ([with_turn(role="assistant")], 1, "turns[1].role"),               # unknown role
    ([with_turn(items=["2", "99"])], 1, "turns[1].items[1]"),          # id not in catalog
    ([with_turn(items=["2"])], 1, "turns[1].text"),                    # 2 [ITEM]s, 1 id
    ([{"id": "d0", "turns": []}], 1, "turns"),                         # empty dialogue
    ([{"turns": GOOD["turns"]}], 1, "id"),                             # missing field
    ([{"id": "d0", "turns": [{"role": "seeker"}]}], 1, "turns[0].text"),
    ([GOOD, GOOD], 2, "id"),                                           # duplicate id
    ([GOOD, "[1, 2]"], 2, None),                                       # not an object
])
def test_bad_dialogues(tmp_path, rows, line, field):
    folder = make_folder(tmp_path, rows)
    msg = error_of(load_dataset, folder)
    assert f"train.jsonl:{line}" in msg
    if field:
        assert f"field '{field}'" in msg


@pytest.mark.parametrize("row, field", [
    ({"title": "No id"}, "id"), ({"id": "3"}, "title"), ({"id": "3", "title": "  "}, "title"),
    ({"id": "3", "title": "X", "year": "1999"}, "year"), ({"id": "3", "title": "X", "year": True}, "year"),
    ({"id": "3", "title": "X", "actors": "Al Pacino"}, "actors"),
    ({"id": "1", "title": "Duplicate"}, "id"), ({"id": True, "title": "X"}, "id"),
    ({"id": " 3", "title": "Spaced id"}, "id"), ({"id": "3\t", "title": "Spaced id"}, "id"),
])
def test_bad_items(tmp_path, row, field):
    path = write_jsonl(tmp_path / "items.jsonl", ITEMS + [row])
    assert error_of(load_items, path).startswith(f"{path}:3 field '{field}'")


def test_missing_files(tmp_path):
    assert "file not found" in error_of(load_items, tmp_path / "items.jsonl")
    items = {"1": Item("1", "Heat")}
    assert str(tmp_path / "x.jsonl") in error_of(load_dialogues, tmp_path / "x.jsonl", items)
    assert "not found" in error_of(load_dataset, tmp_path / "missing")
    assert "not found" in error_of(load_dataset, tmp_path / "missing", fmt="jsonl")
    assert "cannot tell the dataset format" in error_of(load_dataset, tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [GOOD])  # splits without a catalog
    assert "items.jsonl" in error_of(load_dataset, tmp_path)


def test_cli_reports_data_error(tmp_path, capsys):
    folder = make_folder(tmp_path, [with_turn(role="bot")])
    assert main(["data", "stats", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl:1" in err and "turns[1].role" in err and "Traceback" not in err


def test_split_names_are_file_stems(tmp_path):
    folder = make_folder(tmp_path, [GOOD])
    write_jsonl(folder / "test.jsonl", [GOOD])
    write_jsonl(folder / "zzz.jsonl", [GOOD])
    write_jsonl(folder / "items_sources.jsonl", ["not json at all"])  # catalog side file: ignored
    assert list(load_dataset(folder).splits) == ["train", "test", "zzz"]


# ---- ReDial official format on a tiny hand-made conversation -----------------------------------

def redial_conv(msgs, **extra):
    conv = {"conversationId": "7", "initiatorWorkerId": 1, "respondentWorkerId": 2,
            "movieMentions": {"10": "Heat (1995)", "20": "Up (2009)", "30": "Gone (2012)"},
            "respondentQuestions": {"10": {}, "20": {}}, "initiatorQuestions": {},
            "messages": [{"senderWorkerId": w, "text": t} for w, t in msgs]}
    conv.update(extra)
    return conv


def redial_folder(tmp_path, convs, sources=None):
    write_jsonl(tmp_path / "items.jsonl", [{"id": "10", "title": "Heat", "year": 1995},
                                           {"id": "20", "title": "Up", "year": 2009},
                                           {"id": "30", "title": "Gone", "year": 2012}])
    (tmp_path / "official").mkdir()
    write_jsonl(tmp_path / "official" / "test_data.jsonl", convs)
    if sources is not None:
        write_jsonl(tmp_path / "items_sources.jsonl", sources)
    return tmp_path


def test_a_redial_mention_outside_the_catalog_is_written_as_its_title(tmp_path):
    """MESE's rule: a movie the catalog lacks is written as its name from movieMentions, without
    the year (as the catalog's titles are written), and counted."""
    conv = redial_conv([(1, "I like @99"), (2, "see @20")],
                       movieMentions={"20": "Up (2009)", "99": "Foo (1999)"})
    bundle = load_dataset(redial_folder(tmp_path, [conv]))
    (d,) = bundle.splits["test"]
    assert d.turns[0] == Turn(SEEKER, "I like Foo")
    assert bundle.skipped == {"redial: mention not in catalog": 1}


def test_redial_rules(tmp_path):
    conv = redial_conv([(1, "hi, I like @10"), (1, "and @30"), (2, "see @20 or @20"),
                        (2, "or @30 or @99"), (1, "thanks")])
    bundle = load_dataset(redial_folder(tmp_path, [conv]))
    (d,) = bundle.splits["test"]
    assert [t.role for t in d.turns] == [SEEKER, RECOMMENDER, SEEKER]  # runs merged
    assert d.turns[0] == Turn(SEEKER, "hi, I like [ITEM] and Gone", ("10",))  # 30: not in form
    assert d.turns[1] == Turn(RECOMMENDER, "see [ITEM] or [ITEM] or Gone or @99", ("20", "20"))
    assert bundle.skipped == {"redial: mention not in respondentQuestions (pecrs rule)": 2,
                              "redial: mention not in catalog": 1}
    assert len(make_samples([d])) == 2  # repeated @20 counts twice
    linked = load_dataset(tmp_path, mentions="all").splits["test"][0]
    assert linked.turns[1].items == ("20", "20", "30")


def test_redial_pecrs_item_table(tmp_path):
    # Only 10 has a PECRS key; 20 shares no title with it, so it is not linked under "pecrs".
    sources = [{"id": "10", "pecrs_movie_db_key": 5}, {"id": "20"}, {"id": "30"}]
    conv = redial_conv([(1, "hi"), (2, "@10 or @20?")])
    bundle = load_dataset(redial_folder(tmp_path, [conv], sources))
    assert bundle.splits["test"][0].turns[1] == Turn(RECOMMENDER, "[ITEM] or Up?", ("10",))


def test_redial_top_level_files_and_csv_catalog(tmp_path):
    (tmp_path / "movies_with_mentions.csv").write_text(
        "movieId,movieName,nbMentions\n10,Heat  (1995),3\n20,Up (2009),1\n")
    write_jsonl(tmp_path / "test_data.jsonl", [redial_conv([(1, "hi"), (2, "@10!")])])
    assert detect_format(tmp_path) == "redial"
    bundle = load_dataset(tmp_path)
    assert bundle.items["10"] == Item("10", "Heat", 1995)
    assert bundle.splits["test"][0].turns[1] == Turn(RECOMMENDER, "[ITEM]!", ("10",))


@pytest.mark.parametrize("conv, field", [
    (redial_conv([(1, "hi"), (3, "who am I")]), "messages[1].senderWorkerId"),
    (redial_conv([(1, "hi")], messages=[{"text": "no sender"}]), "messages[0].senderWorkerId"),
    (redial_conv([]), "messages"),
    ({"conversationId": "7", "messages": []}, "initiatorWorkerId"),
])
def test_bad_redial(tmp_path, conv, field):
    msg = error_of(load_dataset, redial_folder(tmp_path, [conv]))
    assert "test_data.jsonl:1" in msg and f"field '{field}'" in msg


# ---- INSPIRED TSV on a tiny hand-made file (pecrs.testing.tsv_folder) --------------------------

def test_inspired_tsv_rules(tmp_path):
    movies = "{'Heat (1995)': 0, 'Gone (2012): 11}"  # malformed, as in the real dev file
    rows = [["a", 1, "RECOMMENDER", "hello", "hello", movies, "{}", "{}", "{}"],
            ["a", 2, "SEEKER", "I like Heat and comedy", "I like [MOVIE_TITLE_0] and "
             "[MOVIE_GENRE_0]", movies, "{'comedy': 0}", "{}", "{}"],
            ["a", 3, "SEEKER", "also Gone", "also [MOVIE_TITLE_11]", movies, "{}", "{}", "{}"],
            ["a", 4, "RECOMMENDER", "ok", "ok", movies, "{}", "{}", "{}"]]
    bundle = load_dataset(tsv_folder(tmp_path, rows), fmt="inspired-tsv")
    (d,) = bundle.splits["dev"]
    assert d.turns == (Turn(RECOMMENDER, "hello"),
                       Turn(SEEKER, "I like [ITEM] and comedy also Gone (2012)", ("1",)),
                       Turn(RECOMMENDER, "ok"))
    assert bundle.skipped == {"inspired-tsv: movie not in catalog (written as text)": 1}
    assert bundle.repaired == {"inspired-tsv: malformed movie_dict parsed leniently (dialogues)": 1}


def test_backslash_in_a_movie_dict_is_no_warning(tmp_path):
    """A title holding a backslash ("\\q" is no valid escape) parses as the text it is, without
    Python's "invalid escape sequence" warning reaching the user."""
    import warnings

    movies = "{'Heat\\q (1995)': 0}"
    rows = [["a", 1, "RECOMMENDER", "hi", "hi", movies, "{}", "{}", "{}"],
            ["a", 2, "SEEKER", "Heat", "[MOVIE_TITLE_0]", movies, "{}", "{}", "{}"],
            ["a", 3, "RECOMMENDER", "ok", "ok", movies, "{}", "{}", "{}"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = load_dataset(tsv_folder(tmp_path, rows), fmt="inspired-tsv")
    (d,) = bundle.splits["dev"]
    assert d.turns[1].text == "Heat\\q (1995)" and not bundle.repaired   # not in the catalog: text


def test_bad_inspired_tsv(tmp_path):
    rows = [["a", 1, "RECOMMENDER", "hi", "hi", "{}", "{}", "{}", "{}"],
            ["a", 2, "BOT", "hi", "hi", "{}", "{}", "{}", "{}"]]
    msg = error_of(load_dataset, tsv_folder(tmp_path, rows), fmt="inspired-tsv")
    assert "dev.tsv:3" in msg and "field 'speaker'" in msg
    (tmp_path / "dev.tsv").unlink()
    msg = error_of(load_dataset, tsv_folder(tmp_path, rows, TSV_HEADER[:4]), fmt="inspired-tsv")
    assert "dev.tsv:1" in msg and "field 'text_with_placeholder'" in msg


def test_unparseable_movie_dict(tmp_path):
    rows = [["a", 1, "SEEKER", "Heat", "[MOVIE_TITLE_0]", "not a dict", "{}", "{}", "{}"]]
    msg = error_of(load_dataset, tsv_folder(tmp_path, rows), fmt="inspired-tsv")
    assert "dev.tsv:2" in msg and "field 'movie_dict'" in msg


# ---- properties of the sample rules on random dialogues ----------------------------------------

@st.composite
def dialogues(draw):
    turns = []
    for _ in range(draw(st.integers(1, 8))):
        items = draw(st.lists(st.sampled_from("abcde"), max_size=3))
        words = draw(st.lists(st.sampled_from(["hi", "try", "ok"]), max_size=3))
        turns.append(Turn(draw(st.sampled_from(ROLES)), " ".join(words + [ITEM] * len(items)),
                          tuple(items)))
    return Dialogue(id=draw(st.text("xyz", min_size=1, max_size=4)), turns=tuple(turns))


@settings(max_examples=200, deadline=None)
@given(dialogues())
def test_sample_properties(d):
    samples = make_samples([d])
    responses = [t for t in d.turns[1:] if t.role == RECOMMENDER]
    assert len(samples) == sum(max(1, len(t.items)) for t in responses)
    by_turn = {}
    for s in samples:
        assert s.context == d.turns[:s.turn_index] and s.response is d.turns[s.turn_index]
        assert s.turn_index > 0 and s.response.role == RECOMMENDER
        first_mentions = list(dict.fromkeys(i for t in s.context for i in t.items))
        assert list(s.earlier_items) == first_mentions
        assert s.target_seen_before == (s.target is not None and s.target in s.earlier_items)
        by_turn.setdefault(s.turn_index, []).append(s)
    for t, group in by_turn.items():
        assert [s.target for s in group] == (list(d.turns[t].items) or [None])
        assert [s.repeated for s in group] == [j > 0 for j in range(len(group))]
        assert len({id(s.context) for s in group}) == 1  # the k samples share one context


@settings(max_examples=30, deadline=None)
@given(st.lists(dialogues(), min_size=1, max_size=4, unique_by=lambda d: d.id))
def test_jsonl_write_then_load(ds):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jsonl(folder / "items.jsonl", [{"id": c, "title": c.upper()} for c in "abcde"])
        write_jsonl(folder / "dev.jsonl", [
            {"id": d.id, "turns": [{"role": t.role, "text": t.text, "items": list(t.items)}
                                   for t in d.turns]} for d in ds])
        assert load_dataset(folder).splits["dev"] == ds


def test_a_redial_folder_with_the_full_release_and_the_subset_trains_on_the_full(tmp_path):
    from pecrs.loaders.redial import redial_split_files

    for name in ("train_data.jsonl", "train_subset_data.jsonl", "test_data.jsonl"):
        (tmp_path / name).write_text("")
    files = redial_split_files(tmp_path)
    assert files["train"].name == "train_data.jsonl" and files["test"].name == "test_data.jsonl"
    (tmp_path / "train_data.jsonl").unlink()
    assert redial_split_files(tmp_path)["train"].name == "train_subset_data.jsonl"


def test_an_inspired_key_shared_by_two_ids_resolves_to_the_first_and_is_counted(tmp_path):
    from collections import Counter

    from pecrs.loaders.inspired_tsv import _tsv_key_index, _tsv_lookup

    items = {"a": Item("a", "Emma", 2020), "b": Item("b", "Emma", 2020), "c": Item("c", "Heat", 1995)}
    index, ambiguous = _tsv_key_index(tmp_path, items)
    repaired = Counter()
    assert _tsv_lookup("Emma (2020)", index, ambiguous, repaired) == "a"
    assert _tsv_lookup("Heat (1995)", index, ambiguous, repaired) == "c"
    assert repaired == {"inspired-tsv: key shared by several ids, first id used": 1}
