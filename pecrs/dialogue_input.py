"""A dialogue as a user hands it to `Recommender`: checked and cut before the model reads it.

Input is a list of `Turn`s, a list of {"role", "text", "items"?} dicts, or a `Dialogue`; roles are
"seeker" and "recommender"; a text mentions catalog items as [ITEM] with their ids in "items"
(any other special token's string, "[REC]" or "<|im_end|>", is plain text: pecrs.tokens).
Bad input raises `DataError` (a ValueError) saying which turn and field is wrong. The model reads
the last `context_max_tokens` tokens (256, §4.1); each turn's text is first cut to its last
CHARS_PER_TOKEN x context_max_tokens characters, which bounds the cost of pathological input
(tokens average far fewer than 16 characters, so the cut never reaches text the model would read).
"""
from __future__ import annotations

from .data import ITEM, ROLES, TURN_KEYS, DataError, Dialogue, Turn
from .loaders.dialogues import make_turn

CHARS_PER_TOKEN = 16             # per-turn character cut: 16 x context_max_tokens


def clip_text(text: str, items: list[str], limit: int) -> tuple[str, list[str]]:
    """The last `limit` characters of text, never splitting an [ITEM]; items dropped with it."""
    if len(text) <= limit:
        return text, items
    cut = len(text) - limit
    start = text.rfind(ITEM, 0, cut + len(ITEM) - 1)
    if start != -1 and start < cut < start + len(ITEM):
        cut = start  # keep a placeholder the cut would split
    dropped = text[:cut].count(ITEM)
    return text[cut:], items[dropped:]


def to_turns(dialogue, item_index: dict[str, int], max_chars: int | None = None) -> tuple[Turn, ...]:
    """Validate a dialogue (list of Turns or {"role","text","items"?} dicts, or a Dialogue). Its
    turns are built as the loaders build theirs (`loaders.dialogues.make_turn`: one [ITEM] per item
    id; INSPIRED's QUOTATION_MARK read back, so a pasted dataset turn reads as the model was trained)."""
    if isinstance(dialogue, Dialogue):
        raw = list(dialogue.turns)
    elif isinstance(dialogue, (list, tuple)):
        raw = list(dialogue)
    else:
        raise DataError("a dialogue is a list of turns ({'role', 'text'} dicts or Turn objects) or a "
                        f"Dialogue, got {type(dialogue).__name__}")
    if not raw:
        raise DataError("empty dialogue: give at least one turn")
    turns = []
    for i, t in enumerate(raw):
        where = f"turns[{i}]"
        if isinstance(t, Turn):   # a str of ids would be read as one id per character
            role, text, items = t.role, t.text, t.items if isinstance(t.items, str) else list(t.items or ())
        elif isinstance(t, dict):
            unknown = set(t) - TURN_KEYS
            if unknown:
                raise DataError(f"unknown key(s) {sorted(unknown)} (expected 'role', 'text', 'items')", field=where)
            for key in ("role", "text"):
                if key not in t:
                    raise DataError("missing required key", field=f"{where}.{key}")
            role, text, items = t["role"], t["text"], t.get("items")
            items = [] if items is None else items   # 0, false or "" is a wrong type, not "no items"
        else:
            raise DataError(f"expected a Turn or a dict, got {type(t).__name__}", field=where)
        if role not in ROLES:
            raise DataError(f"unknown role {role!r} (expected one of {list(ROLES)})", field=f"{where}.role")
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type(text).__name__}", field=f"{where}.text")
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise DataError(f"expected a list of item ids, got {items!r}", field=f"{where}.items")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: undecodable bytes read with surrogateescape
            raise DataError(f"text is not valid Unicode (character {e.start} cannot be encoded as UTF-8)",
                            field=f"{where}.text") from None
        for item_id in items:
            if item_id not in item_index:
                raise DataError(f"item id '{item_id}' is not in the catalog", field=f"{where}.items")
        turn = make_turn(role, text, list(items), {}, where)   # the loaders' [ITEM]/items rule
        if max_chars is not None:
            text, items = clip_text(turn.text, list(turn.items), max_chars)
            turn = Turn(role, text, tuple(items))
        turns.append(turn)
    return tuple(turns)
