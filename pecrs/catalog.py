"""The item catalog as the model sees it: tokenised item texts, their LM token states and
their vectors (Eq. 1).

A shipped model also carries its catalog's vectors: `use_saved_vectors` makes the store read
those (no LM pass), so `pecrs evaluate` of that model scores exactly the vectors serving uses.

Two ways to get item token states (`model.item_encoding`; "cached" is the default, chosen on a
toy task with random tiny models, docs/results.md "Choosing the item encoding default"; the
comparison on a real backbone waits for a GPU run):
- "cached": states come once from the frozen base LM (LoRA off) and are kept in memory, so a
  training step only pools and projects them (cheap);
- "adapted": states come from the LoRA-adapted LM, recomputed for the items a step needs
  (the paper's setting; no gradient reaches the LM either way, §3.3).
"""
from __future__ import annotations

import torch

from .data import SEP, Item
from .dialogue_input import CHARS_PER_TOKEN
from .tokens import length_sorted_batches, marked_token_ids

CACHED_STATES_DTYPE = torch.float16   # "cached" item token states: half the memory (ReDial: ~2 GB in float32)
TOKENIZE_CHUNK = 4096                 # items tokenized per call (see tokenize_items)


def cut_pieces(pieces: list[str], limit: int, keep_end: bool = False) -> list[str]:
    """An item's text pieces cut to `limit` characters in all, kept from the start (from the end
    with `keep_end`); the pieces themselves when they fit. Its tokens past model.item_max_tokens
    are dropped anyway, and tokenizing a 1 MB plot whole costs seconds and a GB for 128 tokens
    kept. Prose averages ~4 characters a token, so the cut lies hundreds of tokens past the kept
    ones; `ItemStore` tokenizes whole the rare text whose long tokens (runs of spaces or symbols:
    SmolLM2 has tokens of 81 characters) leave too few before the cut."""
    if sum(map(len, pieces)) <= limit:
        return pieces
    if keep_end:
        return [p[::-1] for p in reversed(cut_pieces([p[::-1] for p in reversed(pieces)], limit))]
    kept, room = [], limit
    for piece in pieces:
        if room <= 0:
            break
        kept.append(piece[:room])
        room -= len(piece)
    return kept


def tokenize_items(items: list[Item], tokenizer, fields: tuple[str, ...], max_tokens: int,
                   chunk: int = TOKENIZE_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask [N, L] of the items' texts (Item.text, [SEP] the only special token in
    it), each cut to `max_tokens` on the tokenizer's truncation side, L the longest kept. Padded on
    the right whatever the tokenizer's padding side: the pooling weight w_l of Eq. 1 belongs to the
    l-th token of the item, and "w/o item pooling" reads the last real one. Items are tokenized
    `chunk` at a time, each chunk's rows cut at once: the whole catalog's token lists held 3 GB
    more at 10^5 items."""
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    ids_parts, mask_parts = [], []
    for start in range(0, len(items), chunk):
        whole = [it.text_pieces(fields) for it in items[start:start + chunk]]
        cut = [cut_pieces(pieces, CHARS_PER_TOKEN * max_tokens, left) for pieces in whole]
        rows = marked_token_ids(tokenizer, cut, SEP)
        # A cut text with fewer than 2 x max_tokens tokens may have lost kept ones: tokenized whole.
        again = [k for k, ids in enumerate(rows) if cut[k] is not whole[k] and len(ids) < 2 * max_tokens]
        for k, ids in zip(again, marked_token_ids(tokenizer, [whole[k] for k in again], SEP) if again else []):
            rows[k] = ids
        rows = [ids[-max_tokens:] if left else ids[:max_tokens] for ids in rows]
        enc = tokenizer.pad({"input_ids": rows}, padding="max_length", max_length=max_tokens,
                            padding_side="right", return_tensors="pt")
        ids_parts.append(enc["input_ids"])
        mask_parts.append(enc["attention_mask"])
    if not ids_parts:
        return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long)
    ids, mask = torch.cat(ids_parts), torch.cat(mask_parts)
    width = int(mask.sum(1).max())
    return ids[:, :width].contiguous(), mask[:, :width].contiguous()


class ItemStore:
    """A catalog's tokenised item texts and the way their vectors are made: "cached" or "adapted"
    (`model.item_encoding`), or "saved" once `use_saved_vectors` gives a shipped model's vectors."""

    def __init__(self, items: list[Item], tokenizer, fields, max_tokens: int = 128, encoding: str = "cached"):
        if encoding not in ("cached", "adapted"):
            raise ValueError(f"model.item_encoding must be 'cached' or 'adapted', not {encoding!r}")
        self.items = list(items)
        self.ids = [it.id for it in self.items]
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        self.input_ids, self.attention_mask = tokenize_items(self.items, tokenizer, tuple(fields), max_tokens)
        self.states: torch.Tensor | None = None   # [N, L, d] once cache_base_states has run
        self.saved: torch.Tensor | None = None    # [N, d] when the vectors came with a shipped model
        self.mode = encoding

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def cache_base_states(self, model, batch_size: int = 64, dtype=CACHED_STATES_DTYPE, progress: bool = False):
        """Compute the frozen-base token states of every item once and keep them ("cached" mode):
        a training step then only pools and projects them."""
        if self.mode == "adapted":   # its steps run the adapted LM and would never read them
            raise ValueError("cache_base_states: this store encodes items with the adapted LM (item_encoding 'adapted')")
        # dtype per batch: the float32 states of the whole catalog are never held (ReDial: ~2 GB).
        states = model.item_token_states(self.input_ids, self.attention_mask, adapted=False,
                                         batch_size=batch_size, dtype=dtype, progress=progress)
        self.states = states
        return self

    def use_saved_vectors(self, vectors: torch.Tensor) -> "ItemStore":
        """Read every item's vector from `vectors` [N, d] (those saved with a model for this very
        catalog, row i = self.items[i]) instead of computing them: inference only."""
        if vectors.shape[0] != len(self):
            raise ValueError(f"{vectors.shape[0]} saved vectors for a catalog of {len(self)} items")
        self.saved, self.mode = vectors.float(), "saved"
        return self

    def to(self, device) -> "ItemStore":
        """Keep token ids, masks and cached states on `device` (in place), so that gathering a
        step's items is a device-side index, not a host-to-device copy."""
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        if self.states is not None:
            self.states = self.states.to(device)
        if self.saved is not None:
            self.saved = self.saved.to(device)
        return self

    def token_states(self, model, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LM token states [n, L, d] and masks [n, L] of the items at catalog `indices`: the held
        cache, or the LM run now (LoRA off for "cached", in the cache's float16; on for "adapted")."""
        idx = indices.to(self.attention_mask.device)
        mask = self.attention_mask[idx]
        if self.mode == "cached" and self.states is not None:
            return self.states[idx.to(self.states.device)], mask
        # The LM's length-sorted batching reads lengths on the host.
        adapted = self.mode == "adapted"
        return model.item_token_states(self.input_ids[idx], mask, adapted=adapted,
                                       dtype=None if adapted else CACHED_STATES_DTYPE), mask

    def vectors(self, model, indices: torch.Tensor) -> torch.Tensor:
        """Item vectors v (Eq. 1) for catalog indices, with gradient into the item encoder (in
        "saved" mode: the shipped vectors, no gradient)."""
        if self.mode == "saved":
            return self.saved[indices.to(self.saved.device)].to(model.device)
        states, mask = self.token_states(model, indices)
        return model.item_vectors(states, mask)

    def chunks_by_length(self, size: int) -> list[torch.Tensor]:
        """Catalog indices, shortest item text first, in chunks of `size` (`length_sorted_batches`):
        the LM cuts each chunk to its longest item."""
        return [torch.from_numpy(rows) for rows in length_sorted_batches(self.attention_mask.sum(1), size)]

    @torch.no_grad()
    def all_vectors(self, model, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Every item's vector (Eq. 1) [N, d], for evaluation and serving alike: the saved vectors,
        or `vectors` over length-sorted chunks, so that without a cache the token states of the
        whole catalog are never held at once. Recomputed on every call: callers keep the result."""
        if self.mode == "saved":
            return self.saved.to(model.device)
        from tqdm import tqdm

        out = None
        with tqdm(total=len(self), desc="encoding items", unit="item", disable=not progress) as bar:
            for rows in self.chunks_by_length(batch_size):
                v = self.vectors(model, rows)
                if out is None:
                    out = v.new_empty(len(self), v.shape[-1])
                out[rows.to(out.device)] = v
                bar.update(len(rows))
        return out if out is not None else torch.zeros(0, model.hidden_size, device=model.device)

    @torch.no_grad()
    def base_pooled_states(self, model, batch_size: int = 64) -> torch.Tensor:
        """Every item's pooled frozen-base state w^T I_j [N, d] float32 (LoRA off, whatever the
        mode): what `model.item_standardize` fits its statistics on before training."""
        out = torch.zeros(len(self), model.hidden_size, device=model.device)
        for rows in self.chunks_by_length(batch_size):
            mask = self.attention_mask[rows]
            if self.states is not None:
                states = self.states[rows.to(self.states.device)]
            else:
                states = model.item_token_states(self.input_ids[rows], mask, adapted=False, batch_size=len(rows))
            out[rows.to(out.device)] = model.item_encoder.pool(states.to(model.device), mask.to(model.device)).float()
        return out
