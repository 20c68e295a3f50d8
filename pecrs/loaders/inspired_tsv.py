"""The original INSPIRED release: items.jsonl + [official/]<split>.tsv.

One row per utterance; rows of a dialogue share `dialog_id`. `text_with_placeholder` replaces
movies by [MOVIE_TITLE_n], where n indexes the dialogue's `movie_dict` {"Title (Year)": n}.
As MESE did: a row without a movie placeholder uses the original `text`; a row with one uses
`text_with_placeholder` with genre/actor/director placeholders put back from their dicts
(others stay as they are); consecutive rows of the same speaker are merged with a space.
Unlike MESE, the whole number n is read (MESE read its first digit only). A movie is linked
by its "Title (Year)" key: first the exact key recorded as `inspired_key` in items_sources.jsonl
(when that file is present), then the key's (title, year) against the catalog (a key shared by
several ids takes the first, counted in `repaired`). Unmatched keys
are written as "Title (Year)" in plain text and counted (the shared catalog holds only the
items PECRS used, so movies MESE could not map are not in it). The one dev dialogue whose
movie_dict is not a valid Python literal (a missing quote) is parsed leniently and counted.
"""
from __future__ import annotations

import ast
import re
import warnings
from collections import Counter
from pathlib import Path

from ..data import ITEM, RECOMMENDER, SEEKER, DataError, DatasetBundle, Dialogue, Item
from .dialogues import make_turn, order_splits, require_dialogues
from .items import load_items, norm_title, split_title_year
from .reading import csv_rows, official_dir, read_csv, read_jsonl

TSV_COLUMNS = ("dialog_id", "speaker", "text", "text_with_placeholder", "movie_dict")
TSV_SPEAKERS = {"SEEKER": SEEKER, "RECOMMENDER": RECOMMENDER}
_MOVIE_PLACEHOLDER = re.compile(r"\[MOVIE_TITLE_(\d+)\]")
_OTHER_PLACEHOLDERS = {  # placeholder prefix -> column holding its {"value": n} dict
    "MOVIE_GENRE": "genre_dict", "MOVIE_P_ACTOR": "actor_dict", "MOVIE_P_DIRECTOR": "director_dict"}
_OTHER_PLACEHOLDER = re.compile(r"\[(MOVIE_GENRE|MOVIE_P_ACTOR|MOVIE_P_DIRECTOR)_(\d+)\]")
_LOOSE_DICT_ENTRY = re.compile(r"""['"](.+?)['"]?\s*:\s*(\d+)\s*(?=,|\})""")


def tsv_split_files(folder: Path) -> dict[str, Path]:
    """Split name (file stem) -> file: the *.tsv files in `folder`/official, else in `folder`."""
    return {p.stem: p for p in official_dir(folder).glob("*.tsv")}


def inspired_tsv_files(folder: Path) -> list[Path]:
    """The files `load_inspired_tsv` reads: the catalog, items_sources.jsonl (the INSPIRED keys)
    and the splits."""
    return [folder / "items.jsonl", folder / "items_sources.jsonl", *tsv_split_files(folder).values()]


def _parse_index_dict(raw: str, where: dict, field: str) -> tuple[dict[int, str], bool]:
    """{'Title (Year)': 0, ...} -> {0: 'Title (Year)'}; second value: whether it was repaired."""
    if not raw or not raw.strip():
        return {}, False
    try:
        with warnings.catch_warnings():   # a backslash in a title ("\q") is kept, not a warning
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
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
        add((norm_title(item.title), item.year), item_id)
    return index, ambiguous


def _tsv_lookup(key: str, index: dict, ambiguous: set, repaired: Counter) -> str | None:
    title, year = split_title_year(key)
    for k in (key, (norm_title(title), year)):
        if k in index:
            if k in ambiguous:
                repaired["inspired-tsv: key shared by several ids, first id used"] += 1
            return index[k]
    return None


def _load_tsv_split(path: Path, index: dict, ambiguous: set, skipped: Counter,
                    repaired: Counter) -> list[Dialogue]:
    rows_by_dialogue: dict[str, list[tuple[int, dict]]] = {}
    for line, row in csv_rows(read_csv(path, "\t", TSV_COLUMNS), path, TSV_COLUMNS):
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
        turns = tuple(make_turn(role, text, ids, {"path": str(path), "line": line},
                                 "text_with_placeholder", repaired) for role, text, ids, line in merged)
        dialogues.append(Dialogue(id=dialog_id, turns=turns))
    return require_dialogues(dialogues, path)


def load_inspired_tsv(folder) -> DatasetBundle:
    """items.jsonl plus the INSPIRED <split>.tsv files in `folder` (or `folder`/official)."""
    folder = Path(folder)
    items = load_items(folder / "items.jsonl")
    files = tsv_split_files(folder)
    if not files:
        raise DataError("no <split>.tsv files", path=str(official_dir(folder)))
    index, ambiguous = _tsv_key_index(folder, items)
    skipped: Counter = Counter()
    repaired: Counter = Counter()
    splits = {name: _load_tsv_split(files[name], index, ambiguous, skipped, repaired)
              for name in order_splits(files)}
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="inspired-tsv",
                         skipped=dict(skipped), repaired=dict(repaired))

