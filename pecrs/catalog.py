"""The item catalog as the model sees it: tokenised item texts, their LM token states and
their vectors (Eq. 1).

A shipped model also carries its catalog's vectors: `use_saved_vectors` makes the store read
those (no LM pass), so `pecrs evaluate` of that model scores exactly the vectors serving uses.

Two ways to get item token states (`model.item_encoding`; "cached" is the default, chosen on the
real backbone in docs/results.md, "Choosing the item encoding default"):
- "cached": states come once from the frozen base LM (LoRA off) and are kept in memory, so a
  training step only pools and projects them (cheap);
- "adapted": states come from the LoRA-adapted LM, recomputed for the items a step needs
  (the paper's setting; no gradient reaches the LM either way, §3.3).
"""
from __future__ import annotations

import torch

from .data import SEP, Item
from .tokens import marked_token_ids

CACHED_STATES_DTYPE = torch.float16   # "cached" item token states: half the memory (ReDial: ~2 GB in float32)


class ItemStore:
    def __init__(self, items: list[Item], tokenizer, fields, max_tokens: int = 128):
        self.items = list(items)
        self.ids = [it.id for it in self.items]
        self.index = {item_id: i for i, item_id in enumerate(self.ids)}
        # Item.text, with [SEP] the only special token in it; cut on the tokenizer's truncation side.
        rows = marked_token_ids(tokenizer, [it.text_pieces(tuple(fields)) for it in self.items], SEP)
        left = getattr(tokenizer, "truncation_side", "right") == "left"
        rows = [ids[-max_tokens:] if left else ids[:max_tokens] for ids in rows]
        # Padded on the right whatever the tokenizer's padding side: the pooling weight w_l of Eq. 1
        # belongs to the l-th token of the item, and "w/o item pooling" reads the last real one.
        enc = tokenizer.pad({"input_ids": rows}, padding="longest", padding_side="right", return_tensors="pt")
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        self.states: torch.Tensor | None = None   # [N, L, d] when cached
        self.saved: torch.Tensor | None = None    # [N, d] when the vectors came with a shipped model
        self.mode = "adapted"

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def cache_base_states(self, model, batch_size: int = 64, dtype=CACHED_STATES_DTYPE, progress: bool = False):
        """Compute the frozen-base token states of every item once ("cached" mode)."""
        # dtype per batch: the float32 states of the whole catalog are never held (ReDial: ~2 GB).
        states = model.item_token_states(self.input_ids, self.attention_mask, adapted=False,
                                         batch_size=batch_size, dtype=dtype, progress=progress)
        self.states = states
        self.mode = "cached"
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
        idx = indices.to(self.attention_mask.device)
        mask = self.attention_mask[idx]
        if self.mode == "cached":
            return self.states[idx.to(self.states.device)], mask
        # "adapted" runs the LM over the items; its length-sorted batching reads lengths on the host.
        return model.item_token_states(self.input_ids[idx], mask, adapted=True), mask

    def vectors(self, model, indices: torch.Tensor) -> torch.Tensor:
        """Item vectors v (Eq. 1) for catalog indices, with gradient into the item encoder (in
        "saved" mode: the shipped vectors, no gradient)."""
        if self.mode == "saved":
            return self.saved[indices.to(self.saved.device)].to(model.device)
        states, mask = self.token_states(model, indices)
        return model.item_vectors(states, mask)

    @torch.no_grad()
    def encode(self, model, adapted: bool, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Every item's vector (Eq. 1) [N, d] float32, computed batch by batch from the LM (LoRA
        off: the frozen base, as "cached" training reads it; on: "adapted"), so the token states
        of the whole catalog are never held at once (a new catalog at serving time)."""
        from tqdm import tqdm

        out = []
        for start in tqdm(range(0, len(self), batch_size), desc="encode catalog", disable=not progress):
            ids = self.input_ids[start:start + batch_size]
            mask = self.attention_mask[start:start + batch_size]
            states = model.item_token_states(ids, mask, adapted=adapted, batch_size=batch_size)
            if not adapted:  # the precision the cached mode trains on (cache_base_states)
                states = states.to(CACHED_STATES_DTYPE)
            out.append(model.item_vectors(states, mask).float())
        return torch.cat(out)

    @torch.no_grad()
    def base_pooled_states(self, model, batch_size: int = 64) -> torch.Tensor:
        """Every item's pooled frozen-base state w^T I_j [N, d] float32 (LoRA off, whatever the
        mode): what `model.item_standardize` fits its statistics on before training."""
        out = []
        for start in range(0, len(self), batch_size):
            mask = self.attention_mask[start:start + batch_size]
            if self.states is not None:
                states = self.states[start:start + batch_size]
            else:
                states = model.item_token_states(self.input_ids[start:start + batch_size], mask, adapted=False,
                                                 batch_size=batch_size)
            out.append(model.item_encoder.pool(states.to(model.device), mask.to(model.device)).float())
        return torch.cat(out) if out else torch.zeros(0, model.hidden_size)

    @torch.no_grad()
    def all_vectors(self, model, batch_size: int = 256) -> torch.Tensor:
        """Every item's vector, for inference: computed once per catalog and checkpoint."""
        out = []
        for start in range(0, len(self), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(self)))
            out.append(self.vectors(model, idx))
        return torch.cat(out)


def sample_negatives(n_items: int, positives: torch.Tensor, m: int, rows: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """M catalog indices that are none of the batch's positives (§3.6), drawn without replacement.
    rows=None: one shared set [M]; rows=B: an independent set per row [B, M] (ablation)."""
    weights = torch.ones(n_items)
    weights[positives.cpu()] = 0
    m = min(m, int(weights.sum()))
    if rows is None:
        return torch.multinomial(weights, m, replacement=False, generator=generator)
    return torch.multinomial(weights.expand(rows, n_items), m, replacement=False, generator=generator)


def vector_slots(n_items: int, *index_tensors: torch.Tensor, size: int | None = None):
    """On the host: the distinct catalog indices a batch touches, (items [U], row [n_items]) with
    row[items[j]] = j (-1 elsewhere). `size` pads items to a fixed U (repeating the first index;
    the padded rows are computed and never read) so that every step has the same shapes."""
    flat = torch.cat([t.flatten().cpu() for t in index_tensors])
    needed = torch.unique(flat[flat >= 0])
    row = torch.full((n_items,), -1, dtype=torch.long)
    row[needed] = torch.arange(len(needed))
    if size is not None:
        if len(needed) > size:
            raise ValueError(f"the batch touches {len(needed)} items, more than its fixed item slots ({size})")
        fill = needed[:1] if len(needed) else torch.zeros(1, dtype=torch.long)
        needed = torch.cat([needed, fill.expand(size - len(needed))])
    return needed, row
