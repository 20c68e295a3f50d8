"""The item catalog: items.jsonl entries, ids, and "Title (Year)" names."""
from __future__ import annotations

import re
from pathlib import Path

from ..data import DataError, Item
from .reading import read_jsonl


def as_id(value, where: dict, field: str) -> str:
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


def norm_title(title: str) -> str:
    return " ".join(title.lower().split())


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})?\)\s*$")


def split_title_year(name: str) -> tuple[str, int | None]:
    """ "Title (Year)" -> ("Title", Year); "Title ()" or a name without a year -> (name, None)."""
    m = _TITLE_YEAR.match(name)
    if m:
        return " ".join(m.group(1).split()), int(m.group(2)) if m.group(2) else None
    return " ".join(name.split()), None


def parse_item(obj: dict, where: dict) -> Item:
    """One catalog entry {"id", "title", "year"?, "actors"?, "directors"?, "genres"?, "plot"?};
    `where` ({"path", "line"}) goes into the DataError of a bad field. Extra keys are ignored."""
    if "id" not in obj:
        raise DataError("missing required field", field="id", **where)
    item_id = as_id(obj["id"], where, "id")
    if item_id != item_id.strip():   # " b01" would be another id than the "b01" dialogues name
        raise DataError(f"item id {item_id!r} has spaces around it", field="id", **where)
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        msg = "missing required field" if "title" not in obj else "expected a non-empty string"
        raise DataError(msg, field="title", **where)
    year = obj.get("year")
    if year is not None and (not isinstance(year, int) or isinstance(year, bool)):
        raise DataError(f"expected an integer or null, got {year!r}", field="year", **where)
    plot = obj.get("plot")
    plot = "" if plot is None else plot   # 0 or [] is a wrong type, not an empty plot
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
