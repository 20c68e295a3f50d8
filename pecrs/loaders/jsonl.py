"""The project's own JSON Lines format: items.jsonl + one <split>.jsonl per split."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data import ROLES, TURN_KEYS, DataError, DatasetBundle, Dialogue, Item
from .dialogues import make_turn, order_splits, require_dialogues
from .items import as_id, load_items
from .reading import check_record, check_text, read_jsonl


def jsonl_split_files(folder: Path) -> dict[str, Path]:
    """Split name (file stem) -> file: every *.jsonl whose name does not start with "items" (in
    any case: an "Items.jsonl" is a misnamed catalog, not a split)."""
    return {p.stem: p for p in folder.glob("*.jsonl") if not p.name.lower().startswith("items")}


def jsonl_files(folder: Path) -> list[Path]:
    """The files `load_jsonl_folder` reads: the catalog and the split files."""
    return [folder / "items.jsonl", *jsonl_split_files(folder).values()]


def load_dialogues(path, items: dict[str, Item], repaired: Counter | None = None) -> list[Dialogue]:
    """Read a <split>.jsonl file: {"id", "turns": [{"role", "text", "items"?}, ...]} per line.
    Every mentioned item id must be in `items`, with one [ITEM] in the text per id. repaired:
    counts the documented repairs (`make_turn`)."""
    path = Path(path)
    dialogues: list[Dialogue] = []
    seen_ids: set[str] = set()
    for n, obj in read_jsonl(path):
        where = {"path": str(path), "line": n}
        for key in ("id", "turns"):
            if key not in obj:
                raise DataError("missing required field", field=key, **where)
        dialogue_id = as_id(obj["id"], where, "id")
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
            check_record(raw, f, ("role", "text"), where)
            if raw["role"] not in ROLES:
                raise DataError(f"unknown role {raw['role']!r} (expected one of {list(ROLES)})",
                                field=f"{f}.role", **where)
            unknown = sorted(set(raw) - TURN_KEYS, key=str)
            if unknown:   # a misspelled "items" would otherwise lose the turn's items
                raise DataError(f"unknown key {unknown[0]!r} (a turn has {', '.join(sorted(TURN_KEYS))})",
                                field=f"{f}.{unknown[0]}", **where)
            check_text(raw, f, where)
            ids = raw.get("items")
            ids = [] if ids is None else ids   # 0, false or {} is a wrong type, not "no items"
            if not isinstance(ids, list):
                raise DataError("expected a list of item ids", field=f"{f}.items", **where)
            ids = [as_id(x, where, f"{f}.items[{k}]") for k, x in enumerate(ids)]
            for k, item_id in enumerate(ids):
                if item_id not in items:
                    raise DataError(f"item id '{item_id}' is not in the catalog",
                                    field=f"{f}.items[{k}]", **where)
            turns.append(make_turn(raw["role"], raw["text"], ids, where, f"{f}.text", repaired))
        dialogues.append(Dialogue(id=dialogue_id, turns=tuple(turns)))
    return dialogues


def load_jsonl_folder(folder) -> DatasetBundle:
    """items.jsonl plus every other *.jsonl whose name does not start with "items" as a split
    (split name = file stem). Files like items_sources.jsonl (catalog provenance) are ignored."""
    folder = Path(folder)
    misnamed = [p.name for p in folder.glob("*.jsonl") if p.name.lower() == "items.jsonl" and p.name != "items.jsonl"]
    if misnamed and not (folder / "items.jsonl").is_file():
        raise DataError(f"the catalog must be named items.jsonl (found {misnamed[0]}; file names are case-sensitive)",
                        path=str(folder / misnamed[0]))
    items = load_items(folder / "items.jsonl")
    files = jsonl_split_files(folder)
    if not files:
        raise DataError("no split files (<split>.jsonl) next to items.jsonl", path=str(folder))
    repaired: Counter = Counter()
    splits = {name: require_dialogues(load_dialogues(files[name], items, repaired), files[name])
              for name in order_splits(files)}
    return DatasetBundle(name=folder.name, items=items, splits=splits, fmt="jsonl", repaired=dict(repaired))

