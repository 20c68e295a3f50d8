"""From samples to token ids: how a dialogue is laid out for the language model (§3.2, §3.4).

A context turn is rendered as "Seeker: text\n" or "Recommender: text\n". Items mentioned in a
turn become *item slots*: positions whose input embedding is the item's vector v_j (Eq. 1)
instead of a token embedding. As in the authors' code, a seeker turn is followed by
[SEP] v.. [SEP] (§3.2 writes the items to the left of the seeker's words), and a recommender
turn is preceded by [REC] v.. [REC_END], which is exactly the layout the model generates at that
turn (Eq. 6: context, [REC], v_p, [REC_END], response).

Every sample becomes:
    context  = last `context_max_tokens` tokens of the rendered turns, then [REC]  (Eq. 2)
    prompt   = "Recommender:"                            (no loss; tells the LM who speaks)
    response = " " + text, first `response_max_tokens` tokens, then EOS   (loss, Eq. 7)
(EOS is the tokenizer's eos token. The shipped model's is <|im_start|>: the transformers it
trained with read SmolLM2's GGUF so, and a checkpoint keeps its roles, pretrained.adopt_token_roles.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .data import ITEM, REC, REC_END, RECOMMENDER, SEP, SEEKER, Sample, Turn, unescape_quotes

NO_ITEM = -1  # item-slot value of an ordinary token
SLOT_ID = 0   # token id at an item slot: any id, its embedding is replaced by the item's vector (PECRS.embed)
IGNORE_INDEX = -100   # label of a position with no loss (torch's cross_entropy default)


def special_tokens(tokenizer) -> set[str]:
    """Every special token's string: the named ones (eos, pad, ...), the layout's markers and the
    backbone's own added special tokens (SmolLM2's <|im_start|>, <|im_end|>, <|endoftext|>)."""
    return set(tokenizer.all_special_tokens) | {t.content for t in
                                                getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}


def reply_stop_ids(tokenizer) -> list[int]:
    """Token ids that end a generated reply. EOS, which every response is trained to end with
    (Eq. 7); a newline, because every context turn ends with one, so the model is starting the next
    speaker's turn; and every other special token but [ITEM]: responses are tokenized with those as
    plain text (marked_token_ids), so a trained model never writes one inside a reply, while an
    instruct backbone still ends its turns with its own (SmolLM2's <|im_end|> when EOS is another)."""
    ids = [tokenizer.eos_token_id]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1:
        ids.append(newline[0])
    others = sorted(tokenizer.convert_tokens_to_ids(t) for t in special_tokens(tokenizer) - {ITEM})
    return list(dict.fromkeys(ids + others))


def reply_text(tokenizer, ids: list[int]) -> str:
    """A generated reply as text: special tokens other than [ITEM] removed, whitespace collapsed,
    and INSPIRED's escaped quote read back (`pecrs.data.unescape_quotes`: a model trained before
    the loaders did so writes it). [ITEM] stays for the caller to fill (evaluation compares it as
    is; serving puts the title)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for special in sorted(special_tokens(tokenizer) - {ITEM}, key=len, reverse=True):
        text = text.replace(special, "")
    return unescape_quotes(" ".join(text.split()))


def marked_token_ids(tokenizer, pieces: list[list[str]], marker: str) -> list[list[int]]:
    """Token ids of texts given as their pieces between `marker`s (one special token: [ITEM] in
    a turn, [SEP] between an item's fields), where the marker is the only special token: another
    special token's string inside a piece ("[REC]", "<|im_end|>", the film "[REC]", or the marker
    itself) is read as plain text, so neither a catalog nor a user can forge the layout's markers
    or end a turn. Texts without such strings (nearly all) are tokenized joined, in one batched
    call (the ids the joined text has always had); the others piece by piece with split_special_tokens
    (whose pieces a SentencePiece tokenizer may each start with a space)."""
    marker_id = tokenizer.convert_tokens_to_ids(marker)
    forged = re.compile("|".join(map(re.escape, sorted(special_tokens(tokenizer) | {marker}, key=len, reverse=True))))
    rows: list[list[int] | None] = [None] * len(pieces)
    plain = [k for k, text in enumerate(pieces) if not any(forged.search(piece) for piece in text)]
    if plain:
        joined = tokenizer([marker.join(pieces[k]) for k in plain], add_special_tokens=False)["input_ids"]
        for k, ids in zip(plain, joined):
            rows[k] = list(ids)
    for k in (k for k, row in enumerate(rows) if row is None):
        ids = tokenizer(pieces[k], add_special_tokens=False, split_special_tokens=True)["input_ids"] if pieces[k] else []
        rows[k] = [t for n, piece_ids in enumerate(ids) for t in ([marker_id] if n else []) + list(piece_ids)]
    return rows


@dataclass
class EncodedSample:
    context_ids: list[int]     # ends with [REC]
    context_items: list[int]   # catalog index at item slots, NO_ITEM elsewhere
    prompt_ids: list[int]
    response_ids: list[int]    # ends with EOS
    target: int                # catalog index of the recommended item, NO_ITEM if none


class DialogueEncoder:
    """Turns `Sample`s into `EncodedSample`s for one tokenizer and one catalog."""

    def __init__(self, tokenizer, item_index: dict[str, int], context_max_tokens: int = 256,
                 response_max_tokens: int = 64, memoize: bool = True):
        """memoize: keep every text's token ids (a dataset's turns recur in many samples); a
        server, whose texts come from users and do not recur, keeps none."""
        self.tokenizer = tokenizer
        self.memoize = memoize
        self.item_index = item_index
        self.context_max_tokens = context_max_tokens
        self.response_max_tokens = response_max_tokens
        ids = tokenizer.convert_tokens_to_ids
        self.sep, self.rec, self.rec_end = ids(SEP), ids(REC), ids(REC_END)
        self.eos = tokenizer.eos_token_id
        self.role_ids = {SEEKER: self._ids("Seeker:"), RECOMMENDER: self._ids("Recommender:")}
        self.newline = self._ids("\n")
        self._text_cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        """Tokenise many texts in one call (fast tokenizers batch in Rust), memoised."""
        known = self._text_cache if self.memoize else {}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            batch = marked_token_ids(self.tokenizer, [(" " + t).split(ITEM) for t in missing], ITEM)
            known.update(zip(missing, batch))
        return [known[t] for t in texts]

    def _item(self, item_id: str) -> int:
        try:
            return self.item_index[item_id]
        except KeyError:
            raise KeyError(f"item id '{item_id}' is not in the catalog") from None

    def turn_tokens(self, turn: Turn, text_ids: list[int]) -> tuple[list[int], list[int]]:
        """One context turn as (token ids, item slots), per the layout in the module docstring."""
        body = self.role_ids[turn.role] + text_ids + self.newline
        slots = [self._item(i) for i in turn.items]
        if not slots:
            return body, [NO_ITEM] * len(body)
        if turn.role == SEEKER:
            ids = body + [self.sep] + [SLOT_ID] * len(slots) + [self.sep]
            items = [NO_ITEM] * (len(body) + 1) + slots + [NO_ITEM]
        else:
            head_ids, head_items = item_head(slots, self.rec_end)
            ids = [self.rec] + head_ids + body
            items = [NO_ITEM] + head_items + [NO_ITEM] * len(body)
        return ids, items

    def encode_context(self, turns: tuple[Turn, ...] | list[Turn]) -> tuple[list[int], list[int]]:
        """Context ids and item slots: the last `context_max_tokens` tokens, then [REC]."""
        ids: list[int] = []
        items: list[int] = []
        for turn, text_ids in zip(turns, self._text_ids([t.text for t in turns])):
            turn_ids, turn_items = self.turn_tokens(turn, text_ids)
            ids += turn_ids
            items += turn_items
        keep = self.context_max_tokens
        return ids[-keep:] + [self.rec], items[-keep:] + [NO_ITEM]

    def encode(self, sample: Sample) -> EncodedSample:
        context_ids, context_items = self.encode_context(sample.context)
        response = self._text_ids([sample.response.text])[0][: self.response_max_tokens]
        target = NO_ITEM if sample.target is None else self._item(sample.target)
        return EncodedSample(context_ids, context_items, self.role_ids[RECOMMENDER],
                             response + [self.eos], target)

    def encode_all(self, samples: list[Sample]) -> list[EncodedSample]:
        # Tokenise every distinct text once up front; encode() then only assembles lists.
        self._text_ids([t.text for s in samples for t in (*s.context, s.response)])
        return [self.encode(s) for s in samples]


@dataclass
class Batch:
    """Padded tensors for one training or evaluation batch (B rows)."""
    context_ids: torch.Tensor     # [B, Lc] right-padded; row i ends with [REC] at context_len[i]-1
    context_items: torch.Tensor   # [B, Lc] catalog index at item slots, NO_ITEM elsewhere
    context_len: torch.Tensor     # [B]
    gen_ids: torch.Tensor         # [B, Lg] generation segment: (v_p, [REC_END])? prompt response
    gen_items: torch.Tensor       # [B, Lg] the v_p slot of rows with a target
    gen_len: torch.Tensor         # [B]
    gen_labels: torch.Tensor      # [B, Lg] next-token targets at each position, IGNORE_INDEX where no loss
    target: torch.Tensor          # [B] catalog index or NO_ITEM

    @property
    def has_target(self) -> torch.Tensor:
        return self.target >= 0

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """Copy to `device`. non_blocking=True with pinned host memory lets the copy overlap the
        GPU's work on the previous step (pin with `pin_memory()` first)."""
        return Batch(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.__dict__.items()})

    def pin_memory(self) -> "Batch":
        return Batch(**{k: v.pin_memory() for k, v in self.__dict__.items()})

    def select(self, rows) -> "Batch":
        """The rows `rows` (a slice or index tensor) of every field, widths unchanged."""
        return Batch(**{k: v[rows] for k, v in self.__dict__.items()})


def length_sorted_batches(lengths, size: int) -> list[np.ndarray]:
    """Row indices in batches of `size`, shortest first (ties in row order). A batch is padded to
    its longest row, so batching rows of similar length wastes little work on padding: contexts of
    INSPIRED's test split in batches of 32 hold 1.45x their real tokens in sample order, 1.02x
    sorted; its item texts in chunks of 64, 1.90x and 1.04x. Evaluation (ranking, perplexity,
    generation), catalog encoding and `PECRS.item_token_states` batch with it (training does not:
    its batches are shuffled). `lengths`: a sequence, array or (any device's) tensor."""
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.cpu().numpy()
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start:start + size] for start in range(0, len(order), size)]


def pad_rows(rows: list[list[int]], width: int | None = None, value: int = NO_ITEM) -> torch.Tensor:
    """[len(rows), width] long tensor: each row, then `value` (width None: the longest row)."""
    width = max(map(len, rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def item_head(items: list[int], rec_end_id: int) -> tuple[list[int], list[int]]:
    """The injected items as (token ids, item slots): one slot per item (its id SLOT_ID, its
    embedding replaced by the item's vector) then [REC_END], the layout of Eq. 6 ([REC] v_p
    [REC_END], the [REC] closing the context). The one layout of training (`collate`), generation
    (`PECRS.generation_inputs`, its ids; the items, a row per sample, it builds as one tensor) and
    an earlier recommender turn in a context (`turn_tokens`)."""
    return [SLOT_ID] * len(items) + [rec_end_id], list(items) + [NO_ITEM]


def collate(encoded: list[EncodedSample], pad_id: int, rec_end_id: int, context_width: int | None = None,
            gen_width: int | None = None) -> Batch:
    """Pad a list of encoded samples into a `Batch` (a loop over the B rows, not over tokens).

    context_width / gen_width pad to a fixed width instead of the batch's longest row, so every
    batch has the same shapes (what CUDA graphs and compiled steps need; see `static_widths`)."""
    Lc = max(len(e.context_ids) for e in encoded)
    if context_width is not None:
        if Lc > context_width:
            raise ValueError(f"a context of {Lc} tokens does not fit context_width={context_width}")
        Lc = context_width
    gens, gen_items, labels = [], [], []
    for e in encoded:
        head_ids, head_items = item_head([e.target], rec_end_id) if e.target >= 0 else ([], [])
        ids = head_ids + e.prompt_ids + e.response_ids
        gens.append(ids)
        gen_items.append(head_items + [NO_ITEM] * (len(ids) - len(head_items)))
        # Position j predicts token j+1; only response tokens are predicted (Eq. 7).
        first_response = len(ids) - len(e.response_ids)
        labels.append([IGNORE_INDEX] * (first_response - 1) + e.response_ids + [IGNORE_INDEX])
    Lg = max(len(g) for g in gens)
    if gen_width is not None:
        if Lg > gen_width:
            raise ValueError(f"a generation segment of {Lg} tokens does not fit gen_width={gen_width}")
        Lg = gen_width

    return Batch(
        context_ids=pad_rows([e.context_ids for e in encoded], Lc, pad_id),
        context_items=pad_rows([e.context_items for e in encoded], Lc, NO_ITEM),
        context_len=torch.tensor([len(e.context_ids) for e in encoded]),
        gen_ids=pad_rows(gens, Lg, pad_id),
        gen_items=pad_rows(gen_items, Lg, NO_ITEM),
        gen_len=torch.tensor([len(g) for g in gens]),
        gen_labels=pad_rows(labels, Lg, IGNORE_INDEX),
        target=torch.tensor([e.target for e in encoded]),
    )


def static_widths(encoder: DialogueEncoder) -> tuple[int, int]:
    """(context_width, gen_width): the longest context and generation segment `encoder` can
    produce, i.e. the fixed shapes of `collate(..., *static_widths(encoder))`.
    Context: `context_max_tokens` + [REC]. Generation: v_p, [REC_END], prompt, response, EOS."""
    prompt = encoder.role_ids[RECOMMENDER]
    return encoder.context_max_tokens + 1, 2 + len(prompt) + encoder.response_max_tokens + 1
