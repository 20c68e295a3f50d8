"""What every format builds its splits from: turns that keep the [ITEM]/items invariant,
non-empty split files, and the order splits are listed in."""
from __future__ import annotations

from pathlib import Path

from ..data import ITEM, DataError, Turn

SPLIT_ORDER = ("train", "dev", "valid", "validation", "test")  # listed first, others alphabetical


def make_turn(role: str, text: str, items: list[str], where: dict, field: str) -> Turn:
    """The one place every loader builds a Turn, so the [ITEM]/items invariant always holds."""
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
