"""The data model: items, dialogues and the samples PECRS trains on (paper §3.1–3.2).

Every loader in `pecrs.loaders` produces these types; every later stage (tokenisation, model,
metrics) consumes them. Nothing here knows about tokenizers or tensors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# The four special tokens of §3.2. [ITEM] stands in a turn's text where an item is mentioned.
ITEM, SEP, REC, REC_END = "[ITEM]", "[SEP]", "[REC]", "[REC_END]"
SPECIAL_TOKENS = (ITEM, SEP, REC, REC_END)

SEEKER, RECOMMENDER = "seeker", "recommender"
ROLES = (SEEKER, RECOMMENDER)
TURN_KEYS = frozenset({"role", "text", "items"})   # a turn object's keys, in every input format

# INSPIRED's release writes every quote and some apostrophes as this word ("QUOTATION_MARKIt
# QUOTATION_MARK", "IQUOTATION_MARKm"), and so do the PECRS files made from it: 442 times in its
# 21,124 turns. Loaders read it back as the character (`unescape_quotes`), and a reply of a model
# trained on the escaped text reads the same (`pecrs.tokens.reply_text`).
QUOTE_ESCAPE = "QUOTATION_MARK"
_ESCAPED_APOSTROPHE = re.compile(rf"(?<=[^\W\d_]){QUOTE_ESCAPE}(?=[^\W\d_])")   # between two letters


def unescape_quotes(text: str) -> str:
    """text with INSPIRED's QUOTATION_MARK read back: an apostrophe between two letters ("I'm"),
    a double quote elsewhere."""
    if QUOTE_ESCAPE not in text:
        return text
    return _ESCAPED_APOSTROPHE.sub("'", text).replace(QUOTE_ESCAPE, '"')


# The item text of §3.2: "Title [SEP] Actors [SEP] Director(s) [SEP] Genre(s) [SEP] Plot".
DEFAULT_ITEM_FIELDS = ("title", "actors", "directors", "genres", "plot")


class DataError(ValueError):
    """Bad input data. The message names the file, line and field so the user can fix it."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ":".join(str(x) for x in (path, line) if x is not None)
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{' '.join(parts)}: {message}" if parts else message)
        self.path, self.line, self.field = path, line, field


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    year: int | None = None
    actors: tuple[str, ...] = ()
    directors: tuple[str, ...] = ()
    genres: tuple[str, ...] = ()
    plot: str = ""

    def text(self, fields: tuple[str, ...] = DEFAULT_ITEM_FIELDS) -> str:
        """The item as the LM reads it, fields joined by [SEP]; list fields are comma-joined."""
        return SEP.join(self.text_pieces(fields))

    def text_pieces(self, fields: tuple[str, ...] = DEFAULT_ITEM_FIELDS) -> list[str]:
        """`text` cut at its [SEP]s, spaces kept ("Heat ", " Al Pacino ", ...): pecrs.catalog
        tokenizes them so that [SEP] is the only special token (a title "[REC]" stays text)."""
        parts = []
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = ", ".join(value)
            elif value is None:
                value = ""
            parts.append(str(value))
        return [f"{' ' if k else ''}{part}{' ' if k < len(parts) - 1 else ''}" for k, part in enumerate(parts)]

    def display(self) -> str:
        """Title (year), as shown to people in place of [ITEM]."""
        return f"{self.title} ({self.year})" if self.year else self.title


@dataclass(frozen=True)
class Turn:
    role: str                      # "seeker" or "recommender"
    text: str                      # with one [ITEM] placeholder per mentioned item
    items: tuple[str, ...] = ()    # mentioned item ids, in the order of their [ITEM] placeholders


@dataclass(frozen=True)
class Dialogue:
    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Sample:
    """One data point of §3.1: predict recommender turn `turn_index` from the turns before it.

    A recommender turn that mentions k items gives k samples, one per `target`; a turn without
    items gives one sample with `target=None` (generation loss only).
    """
    dialogue_id: str
    turn_index: int                      # index of the response turn in the dialogue
    context: tuple[Turn, ...]            # all turns before the response
    response: Turn                       # the recommender turn to generate
    target: str | None                   # the item to recommend, or None
    earlier_items: tuple[str, ...] = ()  # items mentioned before this turn, first mention order
    target_seen_before: bool = False     # target is in earlier_items (excluded by dedup recall)
    repeated: bool = False               # second or later sample of a multi-item turn


@dataclass
class DatasetBundle:
    """A catalog plus its dialogue splits, as read from one dataset folder."""
    name: str
    items: dict[str, Item]
    splits: dict[str, list[Dialogue]] = field(default_factory=dict)
    fmt: str = "jsonl"  # the format it was read from: "jsonl", "redial" or "inspired-tsv"
    # Documented, counted departures from the raw files (see docs/data-format.md). `skipped`:
    # things left out, e.g. a mention that could not be linked to the catalog and so stays plain
    # text instead of becoming an [ITEM]. `repaired`: malformed input that was fixed and kept.
    skipped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
