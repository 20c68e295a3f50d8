"""Positions, attention masks and the KV cache for re-ranking (§3.3): candidates attend only to the
context and carry no position."""
from __future__ import annotations

import inspect

import torch
from torch import nn


def _unwrap(model) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _absolute_position_table(model) -> nn.Embedding | None:
    """GPT-2-style learned position table (`wpe`), added to inputs_embeds inside the model."""
    for name, module in _unwrap(model).named_modules():
        if name.rsplit(".", 1)[-1] == "wpe" and isinstance(module, nn.Embedding):
            return module
    return None


def uses_absolute_positions(model) -> bool:
    """True for learned absolute positions (GPT-2); False for rotary models (Llama, Gemma)."""
    return _absolute_position_table(model) is not None


def cancel_absolute_positions(model, inputs_embeds, position_ids, mask):
    """Subtract the position vectors the model will add, where `mask` is true.

    §3.3 removes positional embeddings from the appended candidate items. GPT-2 computes
    `inputs_embeds + wpe(position_ids)` internally, so feeding `e - wpe(p)` makes the net input
    exactly the item vector `e`, whatever id `p` the candidate is given. Rotary models have no such
    additive term (positions rotate q and k); for them this is a no-op and the caller instead gives
    every candidate the same position id (e.g. the context length), so no candidate is told apart
    from another by position. Shapes: inputs_embeds [B, L, H], position_ids [B, L] (or [1, L]),
    mask [B, L] bool (True = candidate slot).
    """
    table = _absolute_position_table(model)
    if table is None:
        return inputs_embeds
    positions = table(position_ids).to(inputs_embeds.dtype)
    return inputs_embeds - positions * mask.unsqueeze(-1).to(inputs_embeds.dtype)


def additive_attention_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool `allowed` [B, Q, K] -> float mask [B, 1, Q, K]: 0 where allowed, dtype-min where not.

    This is the form transformers passes through untouched when given a 4D mask (see
    `check_4d_mask`). Every query row must allow at least one key, or softmax yields NaN.
    """
    blocked = torch.finfo(dtype).min
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, blocked).unsqueeze(1)


def cache_kwarg_name(model) -> str:
    """Forward keyword for the KV cache: "cache" (transformers >= 5.x) or "past_key_values"."""
    params = inspect.signature(_unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache of a model output: `cache` (transformers >= 5.x) or `past_key_values`."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise RuntimeError("the backbone returned no KV cache")


def crop_cache(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` positions, in place.

    Written against both `Cache.crop` conventions: 4.x takes the length to keep (negative = drop
    that many), 5.x only accepts a negative count to drop. A negative count means the same in both;
    zero is skipped because 4.x reads `crop(0)` as "keep nothing".
    """
    to_remove = cache.get_seq_length() - length
    if to_remove < 0:
        raise ValueError(f"cache holds {cache.get_seq_length()} positions, cannot crop to {length}")
    if to_remove:
        cache.crop(-to_remove)


def check_4d_mask(model, context_len: int = 5, num_candidates: int = 3, atol: float = 1e-4) -> bool:
    """Check on `model` that a custom 4D mask + explicit position ids + a cropped cache work.

    PECRS relies on this for (a) one training forward where candidate items, appended after the
    context, attend only to the context and themselves, and (b) inference scoring many candidates in
    chunks against a cached context. Two things are compared with running each candidate alone
    after the context (the ground truth):
      1. one forward of [context, c_1..c_N] with a float [1, 1, L, L] mask and every candidate at
         position `context_len` (cancelled for GPT-2 via `cancel_absolute_positions`);
      2. the context alone with a DynamicCache, then the candidates in two chunks, each with a
         [1, 1, n, context_len + n] mask, cropping the cache back to the context in between.

    Verified with transformers 5.24.0 / peft 0.21.2 / torch 2.13 (CPU): GPT2LMHeadModel and
    LlamaForCausalLM both pass in "eager" and "sdpa", plain and LoRA-wrapped (tests/test_backbone.py).
    transformers returns a 4D mask as-is (masking_utils `_preprocess_mask_arguments`), so the caller
    owns causality: the context block must be lower-triangular in the mask. Flash-attention kernels
    take no arbitrary mask and are out of scope. Not verified: Gemma-3, whose sliding-window layers
    cannot be cropped once `config.sliding_window` tokens are cached, so chunked scoring must keep
    context + chunk under the window there (or re-run the context).
    Returns True when all outputs match within `atol`.
    """
    base = _unwrap(model)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            return _mask_equivalence(model, context_len, num_candidates, atol)
    finally:
        base.train(was_training)


def _mask_equivalence(model, context_len: int, num_candidates: int, atol: float) -> bool:
    """The comparison `check_4d_mask` describes; returns whether everything matched."""
    from transformers import DynamicCache

    embed = model.get_input_embeddings()
    dtype, device = embed.weight.dtype, embed.weight.device
    gen = torch.Generator().manual_seed(0)
    vocab = embed.weight.shape[0]
    context = embed(torch.randint(0, vocab, (1, context_len), generator=gen).to(device))
    candidates = embed(torch.randint(0, vocab, (1, num_candidates), generator=gen).to(device))
    cand_pos = torch.full((1, num_candidates), context_len, device=device)
    ctx_pos = torch.arange(context_len, device=device).unsqueeze(0)

    def bool_mask(allowed):  # [Q, K] bool -> [1, 1, Q, K] additive, on the model's device
        return additive_attention_mask(allowed.unsqueeze(0).to(device), dtype)

    def hidden(embeds, position_ids, mask=None, **kw):
        out = model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask,
                    output_hidden_states=True, **kw)
        return out.hidden_states[-1]

    def free(embeds, positions):  # candidate inputs without their position vector
        everywhere = torch.ones(positions.shape, dtype=torch.bool, device=device)
        return cancel_absolute_positions(model, embeds, positions, everywhere)

    # Ground truth: each candidate alone after the context, plain causal attention.
    alone = [
        hidden(torch.cat([context, free(candidates[:, i : i + 1], cand_pos[:, :1])], 1),
               torch.cat([ctx_pos, cand_pos[:, :1]], 1))[:, -1]
        for i in range(num_candidates)
    ]
    expected = torch.stack(alone, dim=1)

    # 1. One forward pass with a custom mask.
    total = context_len + num_candidates
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed[context_len:, context_len:] = torch.eye(num_candidates, dtype=torch.bool)
    joint = hidden(torch.cat([context, free(candidates, cand_pos)], 1), torch.cat([ctx_pos, cand_pos], 1),
                   bool_mask(allowed))[:, context_len:]
    ok = torch.allclose(joint, expected, atol=atol)

    # 2. Cached context, candidates in chunks, cache cropped back between chunks.
    cache = DynamicCache()
    model(inputs_embeds=context, position_ids=ctx_pos, use_cache=True, **{cache_kwarg_name(model): cache})
    chunks = []
    for start in range(0, num_candidates, 2):
        stop = min(start + 2, num_candidates)
        n = stop - start
        allowed = torch.cat([torch.ones(n, context_len, dtype=torch.bool), torch.eye(n, dtype=torch.bool)], 1)
        chunks.append(hidden(free(candidates[:, start:stop], cand_pos[:, :n]), cand_pos[:, :n],
                             bool_mask(allowed),
                             use_cache=True, **{cache_kwarg_name(model): cache}))
        crop_cache(cache, context_len)
    ok = ok and torch.allclose(torch.cat(chunks, 1), expected, atol=atol)
    return bool(ok)
