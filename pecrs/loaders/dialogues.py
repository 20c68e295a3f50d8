"""What every format builds its splits from: turns that keep the [ITEM]/items invariant,
non-empty split files, and the order splits are listed in."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..data import ITEM, QUOTE_ESCAPE, DataError, Turn, unescape_quotes

SPLIT_ORDER = ("train", "dev", "valid", "validation", "test")  # listed first, others alphabetical


def make_turn(role: str, text: str, items: list[str], where: dict, field: str,
              repaired: Counter | None = None) -> Turn:
    """The one place every loader builds a Turn, so the [ITEM]/items invariant always holds.
    INSPIRED's escaped quotes are read back here (`pecrs.data.unescape_quotes`), counted in
    `repaired` when given."""
    if QUOTE_ESCAPE in text:
        text = unescape_quotes(text)
        if repaired is not None:
            repaired[f"{QUOTE_ESCAPE} read as a quote or apostrophe (turns)"] += 1
    n = text.count(ITEM)
    if n != len(items):
        raise DataError(f"text has {n} {ITEM} placeholder(s) but {len(items)} item id(s)",
                        field=field, **where)
    return Turn(role=role, text=text, items=tuple(items))


def require_dialogues(dialogues: list, path: Path) -> list:
    if not dialogues:
        raise DataError("no dialogues in this split file", path=str(path))
    return dialogues


def order_splits(names) -> list[str]:
    known = [s for s in SPLIT_ORDER if s in names]
    return known + sorted(set(names) - set(known))
