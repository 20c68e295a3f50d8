"""The same film under several ids. Catalogs hold duplicates (INSPIRED's has "John Wick: Chapter 2"
twice, "Emma" and "Emma.") and sources that disagree on a year (Insidious 2010 and 2011), so
excluding a film (a mentioned one, or one a user has seen) must exclude all its ids: evaluation
and serving both do it through `excluded_rows`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from .data import Item
from .title_linking import title_words


def same_film(items: Sequence[Item]) -> dict[str, tuple[str, ...]]:
    """id -> the other ids of the same film: the same title key (as typed titles are compared,
    `pecrs.title_linking.title_words`) and years at most one apart, or both unknown. Remakes (The Lion
    King 1994 and 2019) are other films. Only ids that have such twins are keys."""
    by_title: dict[tuple[str, ...], list[Item]] = defaultdict(list)
    for item in items:
        _, key = title_words(item.title)
        if key:
            by_title[key].append(item)
    twins: dict[str, tuple[str, ...]] = {}
    for group in by_title.values():
        for a in group if len(group) > 1 else ():
            same = tuple(b.id for b in group if b is not a and (
                (a.year is None and b.year is None) or (a.year is not None and b.year is not None
                                                        and abs(a.year - b.year) <= 1)))
            if same:
                twins[a.id] = same
    return twins


def with_twins(ids: Iterable[str], twins: Mapping[str, tuple[str, ...]]) -> list[str]:
    """`ids` and their twins (`same_film`), each once, in order."""
    return list(dict.fromkeys(x for i in ids for x in (i, *twins.get(i, ()))))


def excluded_rows(ids: Iterable[str], twins: Mapping[str, tuple[str, ...]], row_of: Mapping[str, int]) -> list[int]:
    """The catalog rows never to recommend, sorted: `ids` and their twins (`same_film`: a film
    listed twice is excluded under both ids), ids outside the catalog skipped. Evaluation passes a
    sample's `mentioned_items` (`pecrs.samples`), serving those and the caller's `exclude`."""
    return sorted({row_of[x] for x in with_twins(ids, twins) if x in row_of})
