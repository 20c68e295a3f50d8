"""From ``model.generate`` output to response token ids.

The pad and EOS ids come from the caller, else the model's generation config, else its config; each
row keeps only the new tokens, cut at its first EOS, with EOS and padding removed.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def eos_list(eos_token_id) -> list[int]:
    """The EOS id(s) as a list of ints: none, one id, or several (a tensor or any iterable)."""
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, torch.Tensor):
        return [int(x) for x in eos_token_id.flatten().tolist()]
    if isinstance(eos_token_id, Iterable):
        return [int(x) for x in eos_token_id]
    return [int(eos_token_id)]


def special_ids(model, pad_token_id, eos_token_id) -> tuple[int | None, list[int]]:
    """pad / eos ids: given ones first, else the model's generation_config, else its config."""
    sources = [getattr(model, "generation_config", None), getattr(model, "config", None)]
    if eos_token_id is None:
        for src in sources:
            if src is not None and getattr(src, "eos_token_id", None) is not None:
                eos_token_id = src.eos_token_id
                break
    eos = eos_list(eos_token_id)
    if pad_token_id is None:
        for src in sources:
            if src is not None and getattr(src, "pad_token_id", None) is not None:
                pad_token_id = src.pad_token_id
                break
    if pad_token_id is None and eos:
        pad_token_id = eos[0]  # what transformers does too, minus its warning
    return (int(pad_token_id) if pad_token_id is not None else None), eos


def strip_special(rows, pad_token_id: int | None, eos_token_id) -> list[list[int]]:
    """Cut each row at its first EOS (dropped) and remove padding ids.

    All pad ids are removed, not only trailing ones: a trained model never emits padding (it is never a
    target), and a random test model that does must not leak it.
    """
    eos = set(eos_list(eos_token_id))
    out = []
    for row in rows:
        row = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        kept = []
        for t in row:
            t = int(t)
            if t in eos:
                break
            if pad_token_id is not None and t == pad_token_id:
                continue
            kept.append(t)
        out.append(kept)
    return out


def new_tokens(sequences: torch.Tensor, prompt_len: int, max_new_tokens: int) -> torch.Tensor:
    """Transformers (>= 4.27 and 5.x) returns only the new tokens when generating from inputs_embeds
    alone; should a version prepend a prompt placeholder, drop it."""
    if sequences.shape[1] > max_new_tokens:
        sequences = sequences[:, prompt_len:]
    return sequences
