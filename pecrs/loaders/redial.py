"""The official ReDial release: items.jsonl (or movies_with_mentions.csv) +
[official/]{train_data,train_subset_data,valid_data,test_data}.jsonl.

Each line is a conversation: {"conversationId", "initiatorWorkerId", "respondentWorkerId",
"messages": [{"senderWorkerId", "text", ...}], "movieMentions", "respondentQuestions", ...}.
The initiator is the seeker, the respondent the recommender. Movies appear as "@<movieId>".

PECRS took its ReDial data from MESE's preprocessing (by2299/MESE, Redial_Data_Preprocessing),
and "mentions='pecrs'" (the default) rebuilds the same dialogues so that the published
instance counts come out (test: 8,329). Its rules, found by re-counting the official test file:
  1. consecutive messages of the same worker are merged into one turn, joined by a space;
  2. every "@id" occurrence is one mention, repeats included ("@1 ... @1" gives two items);
  3. a mention is linked (becomes [ITEM]) only if the movie is a key of the dialogue's
     respondentQuestions form (MESE's labelled movies) and is in PECRS's item table (MESE
     could look its name up). Other mentions are written as the movie title in plain text.
Membership of PECRS's item table is read from items_sources.jsonl when present: an item with a
`pecrs_movie_db_key`, or with the same title as such an item (MESE looked names up without the
year too), or whose name is only "(Year)" (MESE's year-stripped lookup of an empty name hit an
entry). Without items_sources.jsonl only the respondentQuestions rule applies.
mentions="all" links every "@id" that is in the catalog instead.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..data import ITEM, RECOMMENDER, SEEKER, DataError, DatasetBundle, Dialogue, Item
from .dialogues import make_turn, require_dialogues
from .items import as_id, load_items, norm_title, split_title_year
from .reading import check_record, check_text, csv_rows, official_dir, read_csv, read_jsonl

REDIAL_SPLIT_FILES = {
    "train": ("train_data.jsonl", "train_subset_data.jsonl"),  # full release preferred
    "dev": ("valid_data.jsonl", "dev_data.jsonl"),
    "test": ("test_data.jsonl",),
}
REDIAL_MENTIONS = ("pecrs", "all")
AT_MENTION = re.compile(r"@(\d+)")   # a movie mention in a ReDial message (the standardized protocol reads it too)


def redial_split_files(folder: Path) -> dict[str, Path]:
    """Split -> the release's file for it, of those present (the full train file before the subset)."""
    official = official_dir(folder)
    found = {}
    for split, names in REDIAL_SPLIT_FILES.items():
        for name in names:
            if (official / name).is_file():
                found[split] = official / name
                break
    return found


def _catalog_file(folder: Path) -> Path:
    """items.jsonl when present, else the release's movies_with_mentions.csv."""
    items = folder / "items.jsonl"
    return items if items.is_file() else official_dir(folder) / "movies_with_mentions.csv"


def redial_files(folder: Path) -> list[Path]:
    """The files `load_redial` reads: the catalog, items_sources.jsonl (rule 3) and the splits."""
    return [_catalog_file(folder), folder / "items_sources.jsonl", *redial_split_files(folder).values()]


def items_from_movies_csv(path: Path) -> dict[str, Item]:
    """A titles-only catalog from ReDial's movies_with_mentions.csv (movieId,movieName,...)."""
    items, first_line = {}, {}
    columns = ("movieId", "movieName")
    for n, row in csv_rows(read_csv(path, ",", columns), path, columns):
        movie_id = as_id(row["movieId"].strip(), {"path": str(path), "line": n}, "movieId")
        if movie_id in first_line:   # the later row would replace the earlier movie unseen
            raise DataError(f"duplicate movieId '{movie_id}' (first on line {first_line[movie_id]})",
                            path=str(path), line=n, field="movieId")
        first_line[movie_id] = n
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
    titles = {norm_title(items[i].title) for i in keyed if i in items}
    year_only = re.compile(r"\(\d{4}\)")
    return {i for i, it in items.items()
            if i in keyed or norm_title(it.title) in titles or year_only.fullmatch(it.title)}


def _redial_dialogue(conv: dict, where: dict, items: dict[str, Item], mentions: str,
                     pecrs_table: set[str] | None, skipped: Counter) -> Dialogue:
    for key in ("conversationId", "initiatorWorkerId", "respondentWorkerId", "messages"):
        if key not in conv:
            raise DataError("missing required field", field=key, **where)
    conversation_id = as_id(conv["conversationId"], where, "conversationId")
    seeker = as_id(conv["initiatorWorkerId"], where, "initiatorWorkerId")
    recommender = as_id(conv["respondentWorkerId"], where, "respondentWorkerId")
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
    names = conv.get("movieMentions")
    if names is None or names == []:  # as pecrs.standardized reads them: no mentions
        names = {}
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
        check_record(msg, f, ("senderWorkerId", "text"), where)
        sender = as_id(msg["senderWorkerId"], where, f"{f}.senderWorkerId")
        if sender not in roles:
            raise DataError(f"sender {msg['senderWorkerId']!r} is neither the initiator nor the "
                            "respondent (unknown role)", field=f"{f}.senderWorkerId", **where)
        check_text(msg, f, where)
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

        text = AT_MENTION.sub(link, text)
        turns.append(make_turn(role, text, ids, where, f"turn {t} (merged messages)"))
    return Dialogue(id=conversation_id, turns=tuple(turns))


def load_redial(folder, mentions: str = "pecrs") -> DatasetBundle:
    """The official ReDial files in `folder` (or `folder`/official). See rules above."""
    folder = Path(folder)
    if mentions not in REDIAL_MENTIONS:
        raise ValueError(f"mentions must be one of {REDIAL_MENTIONS}, got {mentions!r}")
    catalog = _catalog_file(folder)
    if catalog.name == "items.jsonl":
        items = load_items(catalog)
    elif catalog.is_file():
        items = items_from_movies_csv(catalog)
    else:
        raise DataError("file not found (neither items.jsonl nor "
                        f"{catalog.name} is present)", path=str(folder / "items.jsonl"))
    files = redial_split_files(folder)
    if not files:
        raise DataError("no ReDial split files (train_data.jsonl, train_subset_data.jsonl, "
                        "valid_data.jsonl, test_data.jsonl)",
                        path=str(official_dir(folder)))
    pecrs_table = _pecrs_item_table(folder, items) if mentions == "pecrs" else None
    skipped: Counter = Counter()
    splits = {}
    for split, path in files.items():
        dialogues, first_line = [], {}
        for n, conv in read_jsonl(path):
            dialogue = _redial_dialogue(conv, {"path": str(path), "line": n}, items, mentions, pecrs_table, skipped)
            if dialogue.id in first_line:  # as the standardized protocol's reader (pecrs.standardized)
                raise DataError(f"duplicate conversationId '{dialogue.id}' (first on line {first_line[dialogue.id]})",
                                path=str(path), line=n, field="conversationId")
            first_line[dialogue.id] = n
            dialogues.append(dialogue)
        splits[split] = require_dialogues(dialogues, path)
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="redial",
                         skipped=dict(skipped))

