"""Reading dialogue datasets into `DatasetBundle`s (formats documented in docs/data-format.md).

Three on-disk formats are understood, chosen by what a folder holds (or forced with `fmt=`):

  "jsonl"         the project's own layout: items.jsonl + one <split>.jsonl per split
  "redial"        the official ReDial release: items.jsonl (or movies_with_mentions.csv) +
                  [official/]{train_data,train_subset_data,valid_data,test_data}.jsonl
  "inspired-tsv"  the original INSPIRED release: items.jsonl + [official/]<split>.tsv

All three end as the same `Dialogue`/`Turn` objects: roles "seeker"/"recommender", one [ITEM]
placeholder in the text per linked mention, the mentioned ids in `Turn.items` in placeholder order.

Bad input raises `DataError` naming file, line and field. The only things not raised are
documented, counted skips (a mention that cannot be linked to the catalog is written out as plain
text instead of becoming an [ITEM]), recorded in `bundle.skipped` / `bundle.repaired`.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

from .data import (ITEM, RECOMMENDER, ROLES, SEEKER, DataError, DatasetBundle, Dialogue, Item,
                   Turn)

FORMATS = ("jsonl", "redial", "inspired-tsv")
SPLIT_ORDER = ("train", "dev", "valid", "validation", "test")  # listed first, others alphabetical


# ----------------------------------------------------------------------------------------------
# Small helpers shared by all formats

def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    return path


def _read_text(path: Path) -> str:
    """The whole file as text (UTF-8, a leading byte-order mark dropped); bytes that are not
    UTF-8 are a DataError naming the line and column where they start."""
    data = _require_file(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {column} ({e.reason})",
                        path=str(path), line=line) from None


def parse_json_line(line: str, where: dict) -> dict:
    """One JSON Lines line as an object; anything else (malformed or too deeply nested JSON, an
    integer too long to convert, not an object) is a DataError at `where` ({"path", "line"})."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:  # e.msg may end in "at" ("Unterminated string starting at")
        at = "" if e.msg.endswith(" at") else " at"
        raise DataError(f"malformed JSON: {e.msg}{at} column {e.colno}", **where) from None
    except RecursionError:
        raise DataError("malformed JSON: nested too deeply", **where) from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"malformed JSON: {e}", **where) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", **where)
    return obj


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (split at \\n only), non-UTF-8 bytes a DataError."""
    return _read_text(path).split("\n")


def read_jsonl(path: Path):
    """Yield (line number, object) for each non-blank line; malformed JSON is a DataError."""
    for n, line in enumerate(read_lines(path), 1):
        if line.strip():  # a trailing newline or blank separator line is harmless
            yield n, parse_json_line(line, {"path": str(path), "line": n})


def _read_csv(path: Path, delimiter: str, columns) -> csv.DictReader:
    """A DictReader over the whole file (see _read_text) that has every name in `columns`."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as e:
        raise DataError(f"malformed header: {e}", path=str(path), line=1) from None
    for col in columns:
        if col not in fieldnames:
            raise DataError("missing column", path=str(path), line=1, field=col)
    return reader


def _csv_rows(reader: csv.DictReader, path: Path, columns):
    """Yield (line number, row) with every name in `columns` present: a row too short to have
    one, or a line the csv module cannot read, is a DataError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"malformed row: {e}", path=str(path), line=reader.line_num) from None
        for col in columns:
            if row.get(col) is None:
                n = sum(v is not None for k, v in row.items() if k is not None)
                raise DataError(f"row has {n} field(s), too few to reach this column",
                                path=str(path), line=reader.line_num, field=col)
        yield reader.line_num, row


def _require_dialogues(dialogues: list, path: Path) -> list:
    if not dialogues:
        raise DataError("no dialogues in this split file", path=str(path))
    return dialogues


def _as_id(value, where: dict, field: str) -> str:
    # Ids are strings in the data model; integer ids (common in hand-written files) are accepted
    # and converted. Anything else (bool, float, null, list) is almost surely a mistake.
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"expected a non-empty string id, got {value!r}", field=field, **where)


def _str_list(value, where: dict, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DataError(f"expected a list of strings, got {value!r}", field=field, **where)
    return tuple(value)


def _make_turn(role: str, text: str, items: list[str], where: dict, field: str) -> Turn:
    """The one place every loader builds a Turn, so the [ITEM]/items invariant always holds."""
    n = text.count(ITEM)
    if n != len(items):
        raise DataError(f"text has {n} {ITEM} placeholder(s) but {len(items)} item id(s)",
                        field=field, **where)
    return Turn(role=role, text=text, items=tuple(items))


def _norm_title(title: str) -> str:
    return " ".join(title.lower().split())


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})?\)\s*$")


def split_title_year(name: str) -> tuple[str, int | None]:
    """ "Title (Year)" -> ("Title", Year); "Title ()" or a name without a year -> (name, None)."""
    m = _TITLE_YEAR.match(name)
    if m:
        return " ".join(m.group(1).split()), int(m.group(2)) if m.group(2) else None
    return " ".join(name.split()), None


def _order_splits(names) -> list[str]:
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(set(names) - set(known))


# ----------------------------------------------------------------------------------------------
# The project's own JSON Lines format

def parse_item(obj: dict, where: dict) -> Item:
    """One catalog entry {"id", "title", "year"?, "actors"?, "directors"?, "genres"?, "plot"?};
    `where` ({"path", "line"}) goes into the DataError of a bad field. Extra keys are ignored."""
    if "id" not in obj:
        raise DataError("missing required field", field="id", **where)
    item_id = _as_id(obj["id"], where, "id")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        msg = "missing required field" if "title" not in obj else "expected a non-empty string"
        raise DataError(msg, field="title", **where)
    year = obj.get("year")
    if year is not None and (not isinstance(year, int) or isinstance(year, bool)):
        raise DataError(f"expected an integer or null, got {year!r}", field="year", **where)
    plot = obj.get("plot") or ""
    if not isinstance(plot, str):
        raise DataError(f"expected a string, got {plot!r}", field="plot", **where)
    return Item(id=item_id, title=title, year=year,
                actors=_str_list(obj.get("actors"), where, "actors"),
                directors=_str_list(obj.get("directors"), where, "directors"),
                genres=_str_list(obj.get("genres"), where, "genres"), plot=plot)


def load_items(path) -> dict[str, Item]:
    """Read an items.jsonl catalog, one `parse_item` entry per line; ids must be unique."""
    path = Path(path)
    items: dict[str, Item] = {}
    for n, obj in read_jsonl(path):
        where = {"path": str(path), "line": n}
        item = parse_item(obj, where)
        if item.id in items:
            raise DataError(f"duplicate item id '{item.id}'", field="id", **where)
        items[item.id] = item
    if not items:
        raise DataError("catalog is empty", path=str(path))
    return items


def load_dialogues(path, items: dict[str, Item]) -> list[Dialogue]:
    """Read a <split>.jsonl file: {"id", "turns": [{"role", "text", "items"?}, ...]} per line.
    Every mentioned item id must be in `items`, with one [ITEM] in the text per id."""
    path = Path(path)
    dialogues: list[Dialogue] = []
    seen_ids: set[str] = set()
    for n, obj in read_jsonl(path):
        where = {"path": str(path), "line": n}
        for key in ("id", "turns"):
            if key not in obj:
                raise DataError("missing required field", field=key, **where)
        dialogue_id = _as_id(obj["id"], where, "id")
        if dialogue_id in seen_ids:
            raise DataError(f"duplicate dialogue id '{dialogue_id}'", field="id", **where)
        seen_ids.add(dialogue_id)
        raw_turns = obj["turns"]
        if not isinstance(raw_turns, list):
            raise DataError("expected a list of turns", field="turns", **where)
        if not raw_turns:
            raise DataError("empty dialogue (no turns)", field="turns", **where)
        turns = []
        for t, raw in enumerate(raw_turns):
            f = f"turns[{t}]"
            if not isinstance(raw, dict):
                raise DataError("expected an object", field=f, **where)
            for key in ("role", "text"):
                if key not in raw:
                    raise DataError("missing required field", field=f"{f}.{key}", **where)
            if raw["role"] not in ROLES:
                raise DataError(f"unknown role {raw['role']!r} (expected one of {list(ROLES)})",
                                field=f"{f}.role", **where)
            if not isinstance(raw["text"], str):
                raise DataError("expected a string", field=f"{f}.text", **where)
            ids = raw.get("items") or []
            if not isinstance(ids, list):
                raise DataError("expected a list of item ids", field=f"{f}.items", **where)
            ids = [_as_id(x, where, f"{f}.items[{k}]") for k, x in enumerate(ids)]
            for k, item_id in enumerate(ids):
                if item_id not in items:
                    raise DataError(f"item id '{item_id}' is not in the catalog",
                                    field=f"{f}.items[{k}]", **where)
            turns.append(_make_turn(raw["role"], raw["text"], ids, where, f"{f}.text"))
        dialogues.append(Dialogue(id=dialogue_id, turns=tuple(turns)))
    return dialogues


def load_jsonl_folder(folder) -> DatasetBundle:
    """items.jsonl plus every other *.jsonl whose name does not start with "items" as a split
    (split name = file stem). Files like items_sources.jsonl (catalog provenance) are ignored."""
    folder = Path(folder)
    items = load_items(folder / "items.jsonl")
    files = {p.stem: p for p in folder.glob("*.jsonl") if not p.name.startswith("items")}
    if not files:
        raise DataError("no split files (<split>.jsonl) next to items.jsonl", path=str(folder))
    splits = {name: _require_dialogues(load_dialogues(files[name], items), files[name])
              for name in _order_splits(files)}
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="jsonl")


# ----------------------------------------------------------------------------------------------
# ReDial official release
#
# Each line is a conversation: {"conversationId", "initiatorWorkerId", "respondentWorkerId",
# "messages": [{"senderWorkerId", "text", ...}], "movieMentions", "respondentQuestions", ...}.
# The initiator is the seeker, the respondent the recommender. Movies appear as "@<movieId>".
#
# PECRS took its ReDial data from MESE's preprocessing (by2299/MESE, Redial_Data_Preprocessing),
# and "mentions='pecrs'" (the default) rebuilds the same dialogues so that the published
# instance counts come out (test: 8,329). Its rules, found by re-counting the official test file:
#   1. consecutive messages of the same worker are merged into one turn, joined by a space;
#   2. every "@id" occurrence is one mention, repeats included ("@1 ... @1" gives two items);
#   3. a mention is linked (becomes [ITEM]) only if the movie is a key of the dialogue's
#      respondentQuestions form (MESE's labelled movies) and is in PECRS's item table (MESE
#      could look its name up). Other mentions are written as the movie title in plain text.
# Membership of PECRS's item table is read from items_sources.jsonl when present: an item with a
# `pecrs_movie_db_key`, or with the same title as such an item (MESE looked names up without the
# year too), or whose name is only "(Year)" (MESE's year-stripped lookup of an empty name hit an
# entry). Without items_sources.jsonl only the respondentQuestions rule applies.
# mentions="all" links every "@id" that is in the catalog instead.

REDIAL_SPLIT_FILES = {
    "train": ("train_data.jsonl", "train_subset_data.jsonl"),  # full release preferred
    "dev": ("valid_data.jsonl", "dev_data.jsonl"),
    "test": ("test_data.jsonl",),
}
REDIAL_MENTIONS = ("pecrs", "all")
_AT_MENTION = re.compile(r"@(\d+)")


def _redial_official_dir(folder: Path) -> Path:
    return folder / "official" if (folder / "official").is_dir() else folder


def _redial_split_files(folder: Path) -> dict[str, Path]:
    official = _redial_official_dir(folder)
    found = {}
    for split, names in REDIAL_SPLIT_FILES.items():
        for name in names:
            if (official / name).is_file():
                found[split] = official / name
                break
    return found


def _items_from_movies_csv(path: Path) -> dict[str, Item]:
    """A titles-only catalog from ReDial's movies_with_mentions.csv (movieId,movieName,...)."""
    items = {}
    columns = ("movieId", "movieName")
    for n, row in _csv_rows(_read_csv(path, ",", columns), path, columns):
        movie_id = _as_id(row["movieId"].strip(), {"path": str(path), "line": n}, "movieId")
        if not row["movieName"].strip():
            raise DataError("expected a movie name", path=str(path), line=n, field="movieName")
        title, year = split_title_year(row["movieName"])
        items[movie_id] = Item(id=movie_id, title=title or row["movieName"], year=year)
    if not items:
        raise DataError("catalog is empty", path=str(path))
    return items


def _pecrs_item_table(folder: Path, items: dict[str, Item]) -> set[str] | None:
    """Catalog ids that exist in PECRS's ReDial item table (rule 3 above), or None if unknown."""
    path = folder / "items_sources.jsonl"
    if not path.is_file():
        return None
    keyed = {str(obj.get("id")) for _, obj in read_jsonl(path) if "pecrs_movie_db_key" in obj}
    titles = {_norm_title(items[i].title) for i in keyed if i in items}
    year_only = re.compile(r"\(\d{4}\)")
    return {i for i, it in items.items()
            if i in keyed or _norm_title(it.title) in titles or year_only.fullmatch(it.title)}


def _redial_dialogue(conv: dict, where: dict, items: dict[str, Item], mentions: str,
                     pecrs_table: set[str] | None, skipped: Counter) -> Dialogue:
    for key in ("conversationId", "initiatorWorkerId", "respondentWorkerId", "messages"):
        if key not in conv:
            raise DataError("missing required field", field=key, **where)
    conversation_id = _as_id(conv["conversationId"], where, "conversationId")
    seeker = _as_id(conv["initiatorWorkerId"], where, "initiatorWorkerId")
    recommender = _as_id(conv["respondentWorkerId"], where, "respondentWorkerId")
    if seeker == recommender:
        raise DataError(f"the respondent is the initiator ({seeker})", field="respondentWorkerId", **where)
    roles = {seeker: SEEKER, recommender: RECOMMENDER}
    messages = conv["messages"]
    if not isinstance(messages, list):
        raise DataError(f"expected a list of messages, got {type(messages).__name__}",
                        field="messages", **where)
    if not messages:
        raise DataError("empty dialogue (no messages)", field="messages", **where)
    form = conv.get("respondentQuestions") or {}
    if not isinstance(form, (dict, list)):
        raise DataError(f"expected an object, got {type(form).__name__}",
                        field="respondentQuestions", **where)
    names = conv.get("movieMentions") or {}
    if not isinstance(names, dict):
        raise DataError(f"expected an object, got {type(names).__name__}", field="movieMentions", **where)
    for movie_id, name in names.items():
        if name is not None and not isinstance(name, str):
            raise DataError(f"expected a movie name, got {type(name).__name__}",
                            field=f"movieMentions.{movie_id}", **where)

    # Rule 1: merge runs of messages from the same worker.
    merged: list[list] = []  # [role, text]
    for m, msg in enumerate(messages):
        f = f"messages[{m}]"
        if not isinstance(msg, dict):
            raise DataError("expected an object", field=f, **where)
        for key in ("senderWorkerId", "text"):
            if key not in msg:
                raise DataError("missing required field", field=f"{f}.{key}", **where)
        sender = _as_id(msg["senderWorkerId"], where, f"{f}.senderWorkerId")
        if sender not in roles:
            raise DataError(f"sender {msg['senderWorkerId']!r} is neither the initiator nor the "
                            "respondent (unknown role)", field=f"{f}.senderWorkerId", **where)
        if not isinstance(msg["text"], str):
            raise DataError("expected a string", field=f"{f}.text", **where)
        role = roles[sender]
        if merged and merged[-1][0] == role:
            merged[-1][1] += " " + msg["text"]
        else:
            merged.append([role, msg["text"]])

    # Rules 2-3: each "@id" becomes [ITEM] (linked) or the movie's title (documented skip).
    turns = []
    for t, (role, text) in enumerate(merged):
        ids: list[str] = []

        def link(match: re.Match) -> str:
            movie_id = match.group(1)
            if movie_id not in items:
                skipped["redial: mention not in catalog"] += 1
                name = names.get(movie_id)
                return split_title_year(name)[0] if name else match.group(0)
            if mentions == "pecrs":
                if movie_id not in form:
                    skipped["redial: mention not in respondentQuestions (pecrs rule)"] += 1
                    return items[movie_id].title
                if pecrs_table is not None and movie_id not in pecrs_table:
                    skipped["redial: mention not in PECRS item table (pecrs rule)"] += 1
                    return items[movie_id].title
            ids.append(movie_id)
            return ITEM

        text = _AT_MENTION.sub(link, text)
        turns.append(_make_turn(role, text, ids, where, f"turn {t} (merged messages)"))
    return Dialogue(id=conversation_id, turns=tuple(turns))


def load_redial(folder, mentions: str = "pecrs") -> DatasetBundle:
    """The official ReDial files in `folder` (or `folder`/official). See rules above."""
    folder = Path(folder)
    if mentions not in REDIAL_MENTIONS:
        raise ValueError(f"mentions must be one of {REDIAL_MENTIONS}, got {mentions!r}")
    if (folder / "items.jsonl").is_file():
        items = load_items(folder / "items.jsonl")
    else:
        csv_path = _redial_official_dir(folder) / "movies_with_mentions.csv"
        if not csv_path.is_file():
            raise DataError("file not found (neither items.jsonl nor "
                            f"{csv_path.name} is present)", path=str(folder / "items.jsonl"))
        items = _items_from_movies_csv(csv_path)
    files = _redial_split_files(folder)
    if not files:
        raise DataError("no ReDial split files (train_data.jsonl, train_subset_data.jsonl, "
                        "valid_data.jsonl, test_data.jsonl)",
                        path=str(_redial_official_dir(folder)))
    pecrs_table = _pecrs_item_table(folder, items) if mentions == "pecrs" else None
    skipped: Counter = Counter()
    splits = {}
    for split, path in files.items():
        splits[split] = _require_dialogues([
            _redial_dialogue(conv, {"path": str(path), "line": n}, items, mentions, pecrs_table,
                             skipped)
            for n, conv in read_jsonl(path)], path)
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="redial",
                         skipped=dict(skipped))


# ----------------------------------------------------------------------------------------------
# INSPIRED original TSV release
#
# One row per utterance; rows of a dialogue share `dialog_id`. `text_with_placeholder` replaces
# movies by [MOVIE_TITLE_n], where n indexes the dialogue's `movie_dict` {"Title (Year)": n}.
# As MESE did: a row without a movie placeholder uses the original `text`; a row with one uses
# `text_with_placeholder` with genre/actor/director placeholders put back from their dicts
# (others stay as they are); consecutive rows of the same speaker are merged with a space.
# Unlike MESE, the whole number n is read (MESE read its first digit only). A movie is linked
# by its "Title (Year)" key: first the exact key recorded as `inspired_key` in items_sources.jsonl
# (when that file is present), then the key's (title, year) against the catalog (a key shared by
# several ids takes the first, counted in `repaired`). Unmatched keys
# are written as "Title (Year)" in plain text and counted (the shared catalog holds only the
# items PECRS used, so movies MESE could not map are not in it). The one dev dialogue whose
# movie_dict is not a valid Python literal (a missing quote) is parsed leniently and counted.

TSV_COLUMNS = ("dialog_id", "speaker", "text", "text_with_placeholder", "movie_dict")
TSV_SPEAKERS = {"SEEKER": SEEKER, "RECOMMENDER": RECOMMENDER}
_MOVIE_PLACEHOLDER = re.compile(r"\[MOVIE_TITLE_(\d+)\]")
_OTHER_PLACEHOLDERS = {  # placeholder prefix -> column holding its {"value": n} dict
    "MOVIE_GENRE": "genre_dict", "MOVIE_P_ACTOR": "actor_dict", "MOVIE_P_DIRECTOR": "director_dict"}
_OTHER_PLACEHOLDER = re.compile(r"\[(MOVIE_GENRE|MOVIE_P_ACTOR|MOVIE_P_DIRECTOR)_(\d+)\]")
_LOOSE_DICT_ENTRY = re.compile(r"""['"](.+?)['"]?\s*:\s*(\d+)\s*(?=,|\})""")


def _parse_index_dict(raw: str, where: dict, field: str) -> tuple[dict[int, str], bool]:
    """{'Title (Year)': 0, ...} -> {0: 'Title (Year)'}; second value: whether it was repaired."""
    if not raw or not raw.strip():
        return {}, False
    try:
        parsed = ast.literal_eval(raw)
        if not isinstance(parsed, dict):
            raise ValueError
        return {int(v): str(k) for k, v in parsed.items()}, False
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError):
        pass
    # Tolerant parse for a missing quote, e.g. {'A (2019)': 0, 'B (1999): 1}.
    entries = _LOOSE_DICT_ENTRY.findall(raw)
    if not entries:
        raise DataError(f"not a dictionary literal: {raw[:80]!r}", field=field, **where)
    return {int(n): key for key, n in entries}, True


def _tsv_key_index(folder: Path, items: dict[str, Item]) -> tuple[dict, set]:
    """Movie key -> first catalog id with it, plus the keys shared by several ids. Keys are the
    exact INSPIRED "Title (Year)" strings from items_sources.jsonl (if present) and
    (normalised title, year) pairs from the catalog."""
    index: dict = {}
    ambiguous = set()

    def add(key, item_id):
        if key in index:
            if index[key] != item_id:
                ambiguous.add(key)
        else:
            index[key] = item_id

    sources = folder / "items_sources.jsonl"
    if sources.is_file():
        for _, obj in read_jsonl(sources):
            if isinstance(obj.get("inspired_key"), str) and str(obj.get("id")) in items:
                add(obj["inspired_key"], str(obj["id"]))
    for item_id, item in items.items():
        add((_norm_title(item.title), item.year), item_id)
    return index, ambiguous


def _tsv_lookup(key: str, index: dict, ambiguous: set, repaired: Counter) -> str | None:
    title, year = split_title_year(key)
    for k in (key, (_norm_title(title), year)):
        if k in index:
            if k in ambiguous:
                repaired["inspired-tsv: key shared by several ids, first id used"] += 1
            return index[k]
    return None


def _load_tsv_split(path: Path, index: dict, ambiguous: set, skipped: Counter,
                    repaired: Counter) -> list[Dialogue]:
    rows_by_dialogue: dict[str, list[tuple[int, dict]]] = {}
    for line, row in _csv_rows(_read_csv(path, "\t", TSV_COLUMNS), path, TSV_COLUMNS):
        rows_by_dialogue.setdefault(row["dialog_id"], []).append((line, row))

    dialogues = []
    for dialog_id, rows in rows_by_dialogue.items():
        merged: list[list] = []  # [role, text, ids, line]
        repaired_here = False
        for line, row in rows:
            where = {"path": str(path), "line": line}
            if row["speaker"] not in TSV_SPEAKERS:
                raise DataError(f"unknown role {row['speaker']!r} (expected SEEKER or "
                                "RECOMMENDER)", field="speaker", **where)
            role = TSV_SPEAKERS[row["speaker"]]
            text_p = row["text_with_placeholder"] or ""
            ids: list[str] = []
            if not _MOVIE_PLACEHOLDER.search(text_p):
                text = row["text"] or ""
            else:
                movies, fixed = _parse_index_dict(row["movie_dict"], where, "movie_dict")
                repaired_here |= fixed

                def link(match: re.Match) -> str:
                    key = movies.get(int(match.group(1)))
                    if not key or not key.strip():
                        # No title to link or write: keep the placeholder visible, like the
                        # other INSPIRED placeholders that cannot be resolved.
                        skipped["inspired-tsv: placeholder without a title in movie_dict"] += 1
                        return match.group(0)
                    item_id = _tsv_lookup(key, index, ambiguous, repaired)
                    if item_id is None:
                        skipped["inspired-tsv: movie not in catalog (written as text)"] += 1
                        title, year = split_title_year(key)
                        return f"{title} ({year})" if year else title
                    ids.append(item_id)
                    return ITEM

                text = _MOVIE_PLACEHOLDER.sub(link, text_p)
                others = {prefix: _parse_index_dict(row.get(col) or "", where, col)[0]
                          for prefix, col in _OTHER_PLACEHOLDERS.items()}
                text = _OTHER_PLACEHOLDER.sub(
                    lambda m: others[m.group(1)].get(int(m.group(2)), m.group(0)), text)
            if merged and merged[-1][0] == role:
                merged[-1][1] += " " + text
                merged[-1][2] += ids
            else:
                merged.append([role, text, ids, line])
        if repaired_here:
            repaired["inspired-tsv: malformed movie_dict parsed leniently (dialogues)"] += 1
        turns = tuple(_make_turn(role, text, ids, {"path": str(path), "line": line},
                                 "text_with_placeholder") for role, text, ids, line in merged)
        dialogues.append(Dialogue(id=dialog_id, turns=turns))
    return _require_dialogues(dialogues, path)


def load_inspired_tsv(folder) -> DatasetBundle:
    """items.jsonl plus the INSPIRED <split>.tsv files in `folder` (or `folder`/official)."""
    folder = Path(folder)
    items = load_items(folder / "items.jsonl")
    tsv_dir = folder / "official" if (folder / "official").is_dir() else folder
    files = {p.stem: p for p in tsv_dir.glob("*.tsv")}
    if not files:
        raise DataError("no <split>.tsv files", path=str(tsv_dir))
    index, ambiguous = _tsv_key_index(folder, items)
    skipped: Counter = Counter()
    repaired: Counter = Counter()
    splits = {name: _load_tsv_split(files[name], index, ambiguous, skipped, repaired)
              for name in _order_splits(files)}
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="inspired-tsv",
                         skipped=dict(skipped), repaired=dict(repaired))


# ----------------------------------------------------------------------------------------------
# Entry point

def detect_format(folder) -> str:
    """Which loader fits `folder`: ReDial if it (or its official/) holds ReDial's file names
    (train_data.jsonl, test_data.jsonl, ...), else JSON Lines if it holds a split *.jsonl next to
    items.jsonl (the shared INSPIRED folder holds both JSON Lines and TSV files: JSON Lines
    wins), else INSPIRED TSV if it (or official/) holds *.tsv files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("dataset folder not found", path=str(folder))
    if _redial_split_files(folder):
        return "redial"
    if any(not p.name.startswith("items") for p in folder.glob("*.jsonl")):
        return "jsonl"
    tsv_dir = folder / "official" if (folder / "official").is_dir() else folder
    if any(tsv_dir.glob("*.tsv")):
        return "inspired-tsv"
    raise DataError("cannot tell the dataset format: expected items.jsonl with <split>.jsonl, "
                    "ReDial *_data.jsonl files, or INSPIRED <split>.tsv files", path=str(folder))


def load_dataset(path, fmt: str | None = None, *, mentions: str = "pecrs") -> DatasetBundle:
    """Load a dataset folder. `fmt` forces "jsonl", "redial" or "inspired-tsv" (default: detect).
    `mentions` only affects ReDial: "pecrs" (reproduces PECRS's samples) or "all"."""
    path = Path(path)
    if fmt is None:
        fmt = detect_format(path)
    elif not path.is_dir():
        raise DataError("dataset folder not found", path=str(path))
    if fmt == "jsonl":
        return load_jsonl_folder(path)
    if fmt == "redial":
        return load_redial(path, mentions=mentions)
    if fmt == "inspired-tsv":
        return load_inspired_tsv(path)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
