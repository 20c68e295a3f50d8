"""Property-based fuzzing of every dataset loader (hypothesis).

Each layout below is a small valid dataset folder. One of its files is replaced by random bytes,
by the valid file with bytes cut, inserted or overwritten, or by the valid file with its
structure mutated (a JSON node replaced, removed or added; a TSV/CSV cell changed, a row cut
short or lengthened, rows dropped or repeated). Loading must then either succeed, giving
dialogues whose [ITEM]s match their catalog ids, or raise the project's `DataError` whose message
starts with the file it is about. Anything else (a TypeError, a RecursionError, a
UnicodeDecodeError, ...) fails the test. In CI (CI=true) the examples are derandomized so that
a run is reproducible; the whole file runs in well under 60 s.
"""
import copy
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pecrs.data import ITEM, DataError
from pecrs.loaders import load_dataset
from pecrs.testing import TSV_HEADER

FUZZ = settings(max_examples=int(os.environ.get("PECRS_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize=os.environ.get("CI") == "true", database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def table(rows, delimiter) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


ITEMS = [{"id": "10", "title": "Heat", "year": 1995, "actors": ["Al Pacino"], "directors": ["Michael Mann"],
          "genres": ["Crime"], "plot": "A heist."},
         {"id": "20", "title": "Up", "year": 2009, "genres": ["Animation"]},
         {"id": 30, "title": "Gone Girl", "year": None}]
SOURCES = [{"id": "10", "pecrs_movie_db_key": 5, "inspired_key": "Heat (1995)"},
           {"id": "20", "inspired_key": "Up (2009)"}, {"id": "30"}]
DIALOGUES = [
    {"id": "d0", "turns": [{"role": "seeker", "text": "Hi, I liked [ITEM]", "items": ["10"]},
                           {"role": "recommender", "text": "Try [ITEM] and [ITEM]!", "items": ["20", 30]}]},
    {"id": "d1", "turns": [{"role": "recommender", "text": "Hello"}, {"role": "seeker", "text": "bye"}]},
]
CONVERSATIONS = [
    {"conversationId": "7", "initiatorWorkerId": 1, "respondentWorkerId": 2,
     "movieMentions": {"10": "Heat (1995)", "20": "Up (2009)", "99": "Nope (2001)"},
     "respondentQuestions": {"10": {"liked": 1}, "20": {}}, "initiatorQuestions": {},
     "messages": [{"senderWorkerId": 1, "text": "I like @10", "messageId": 1},
                  {"senderWorkerId": 1, "text": "and @99"},
                  {"senderWorkerId": 2, "text": "see @20 or @30"}]},
    {"conversationId": 8, "initiatorWorkerId": 3, "respondentWorkerId": 4, "respondentQuestions": [],
     "messages": [{"senderWorkerId": 4, "text": "hello"}, {"senderWorkerId": 3, "text": "@10?"}]},
]
MOVIES_CSV = [["movieId", "movieName", "nbMentions"], ["10", "Heat  (1995)", "3"], ["20", "Up (2009)", "1"],
              ["30", "Gone Girl ()", "1"]]
MOVIES = "{'Heat (1995)': 0, 'Up (2009)': 1, 'Unknown (1999)': 2}"
TSV = [TSV_HEADER,
       ["a", "1", "RECOMMENDER", "hello", "hello", MOVIES, "{}", "{}", "{}"],
       ["a", "2", "SEEKER", "I like Heat, comedy", "I like [MOVIE_TITLE_0], [MOVIE_GENRE_0]", MOVIES,
        "{'comedy': 0}", "{'Al Pacino': 0}", "{}"],
       ["a", "3", "RECOMMENDER", "Up or Unknown", "[MOVIE_TITLE_1] or [MOVIE_TITLE_2]", MOVIES, "{}", "{}", "{}"],
       ["b", "1", "SEEKER", "hi", "hi", "", "", "", ""]]

# layout name -> (format, {relative path: file content})
LAYOUTS = {
    "jsonl": ("jsonl", {"items.jsonl": jsonl(ITEMS), "train.jsonl": jsonl(DIALOGUES),
                        "test.jsonl": jsonl(DIALOGUES[:1])}),
    "redial": ("redial", {"items.jsonl": jsonl(ITEMS), "items_sources.jsonl": jsonl(SOURCES),
                          "official/train_data.jsonl": jsonl(CONVERSATIONS),
                          "official/test_data.jsonl": jsonl(CONVERSATIONS[:1])}),
    "redial-csv": ("redial", {"movies_with_mentions.csv": table(MOVIES_CSV, ","),
                              "test_data.jsonl": jsonl(CONVERSATIONS)}),
    "inspired-tsv": ("inspired-tsv", {"items.jsonl": jsonl(ITEMS), "items_sources.jsonl": jsonl(SOURCES),
                                      "official/train.tsv": table(TSV, "\t"),
                                      "official/test.tsv": table(TSV[:2], "\t")}),
}
TARGETS = [(layout, name) for layout, (_, files) in LAYOUTS.items() for name in files]


def load_with(layout: str, target: str, content: bytes):
    """Write the layout with `target` replaced by `content`, load it, check the outcome."""
    fmt, files = LAYOUTS[layout]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if name == target else data)
        try:
            bundle = load_dataset(folder, fmt=fmt)
        except DataError as e:
            # The message starts with the file it is about, one of the folder's files.
            assert e.path is not None and str(e).startswith(e.path), str(e)
            named = Path(e.path)
            assert named == folder or named.relative_to(folder).as_posix() in files, str(e)
            return e
        for dialogues in bundle.splits.values():
            assert dialogues
            for d in dialogues:
                for turn in d.turns:
                    assert turn.text.count(ITEM) == len(turn.items)
                    assert all(i in bundle.items for i in turn.items)
        return None


# ---- random bytes ------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, target", TARGETS)
@FUZZ
@given(content=st.binary(max_size=600))
def test_random_bytes(layout, target, content):
    error = load_with(layout, target, content)
    if error is not None and target != "items_sources.jsonl":
        # (a broken side file names itself too; a broken main file can only be about itself)
        assert Path(error.path).name == Path(target).name, str(error)


# ---- byte-level mutations of a valid file ------------------------------------------------------

SPECIAL_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\n", b"\r", b"\t", b'"', b"[", b"{",
                                 b"\xef\xbb\xbf", b"\\", b",", b"@", b"[ITEM]", b"\xe2\x80\xa8"])


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["cut", "insert", "overwrite", "truncate"]))
        chunk = draw(st.one_of(SPECIAL_BYTES, st.binary(min_size=1, max_size=8)))
        if op == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = chunk
        elif op == "overwrite":
            data[at:at + len(chunk)] = chunk
        else:
            del data[at:]
    return bytes(data)


@pytest.mark.parametrize("layout, target", TARGETS)
@FUZZ
@given(data=st.data())
def test_byte_mutations(layout, target, data):
    valid = LAYOUTS[layout][1][target]
    load_with(layout, target, data.draw(byte_mutations(valid)))


# ---- structural mutations ----------------------------------------------------------------------

TRICKY_TEXT = st.sampled_from(["", " ", "[ITEM]", "[ITEM] and [ITEM]", "@10", "@99 @10", "10", "30",
                               "seeker", "recommender", "SEEKER", "RECOMMENDER", "[MOVIE_TITLE_0]",
                               "[MOVIE_TITLE_7]", "[MOVIE_GENRE_0]", "{'Heat (1995)': 1e999}",
                               "{'Heat (1995)': 'x'}", "{'A (2000)': 0, 'B (2001): 1}", "((((", "[" * 50,
                               "Heat (1995)", "\t", "\n", '"', "None", "{}", "[]"])
TEXT = st.one_of(TRICKY_TEXT, st.text(max_size=12))
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**70), st.floats(), TEXT)
JSON_VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


def node_paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from node_paths(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from node_paths(child, path + (i,))


@st.composite
def mutated_json(draw, value):
    """`value` with one node replaced, removed, or given an extra key/element."""
    value = copy.deepcopy(value)
    path = draw(st.sampled_from(list(node_paths(value))))
    new = draw(JSON_VALUES)
    if not path:
        return new
    parent = value
    for key in path[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(["replace", "replace", "remove", "add", "nest"]))
    if op == "replace":
        parent[path[-1]] = new
    elif op == "remove":
        del parent[path[-1]]
    elif op == "nest":
        parent[path[-1]] = [parent[path[-1]]] if draw(st.booleans()) else {"x": parent[path[-1]]}
    elif isinstance(parent, dict):
        parent[draw(TEXT)] = new
    else:
        parent.insert(path[-1], new)
    return value


@st.composite
def mutated_lines(draw, lines: list, mutate_one):
    """Some lines mutated by `mutate_one`, then maybe a line dropped or repeated."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = draw(mutate_one(lines[i]))
    op = draw(st.sampled_from(["keep", "drop", "repeat"]))
    i = draw(st.integers(0, len(lines) - 1))
    if op == "drop":
        del lines[i]
    elif op == "repeat":
        lines.insert(i, lines[i])
    return lines


@st.composite
def mutated_row(draw, row):
    row = list(row)
    op = draw(st.sampled_from(["cell", "cell", "shorten", "lengthen"]))
    if op == "cell" and row:
        row[draw(st.integers(0, len(row) - 1))] = draw(TEXT)
    elif op == "shorten":
        del row[draw(st.integers(0, len(row))):]
    else:
        row += draw(st.lists(TEXT, min_size=1, max_size=3))
    return row


def structural(target: str, valid: bytes):
    if target.endswith(".jsonl"):
        rows = [json.loads(line) for line in valid.decode().splitlines()]
        return mutated_lines(rows, mutated_json).map(jsonl)
    delimiter = "\t" if target.endswith(".tsv") else ","
    rows = list(csv.reader(io.StringIO(valid.decode()), delimiter=delimiter))
    return mutated_lines(rows, mutated_row).map(lambda r: table(r, delimiter))


@pytest.mark.parametrize("layout, target", TARGETS)
@FUZZ
@given(data=st.data())
def test_structural_mutations(layout, target, data):
    valid = LAYOUTS[layout][1][target]
    load_with(layout, target, data.draw(structural(target, valid)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_are_valid(layout):
    """The unmutated layouts load (so the fuzz tests start from valid data)."""
    fmt, files = LAYOUTS[layout]
    first = next(iter(files))
    assert load_with(layout, first, files[first]) is None
