"""Re-ranking attention without the candidate-by-candidate block (§3.3, inference).

When K candidates are scored against a cached context of Lc tokens, each candidate may attend to
the context and to itself, never to another candidate. Through the stock attention that is a
[K, Lc + K] score matrix per head in which the [K, K] block is masked except its diagonal: for
M_inference = 700 and a 200-token context, three quarters of the attention work is thrown away
(profile in docs/performance.md). Here the same softmax is computed from its two live parts:

    s_ctx  = q · k_ctx / sqrt(d) + mask           [K, Lc]   (the context, as the caller masked it)
    s_self = q · k_self / sqrt(d)                 [K, 1]    (the candidate's own key)
    p      = softmax([s_ctx, s_self])
    out    = p_ctx · v_ctx + p_self · v_self

which is the stock result exactly (up to float rounding), at O(K·Lc) instead of O(K·(Lc + K)).

How it is wired: `use_candidate_attention(model)` registers one attention function with
transformers' AttentionInterface and points the model at it. Calls that pass the keyword
`self_only_queries=K` (only `PECRS.rerank_with_cache` does) take the path above for their last K
queries, which must be the whole query block; every other call (training, the context pass,
generation) goes unchanged to the implementation the model had (sdpa or eager). Backbones whose
layers do not forward keyword arguments to the attention function simply keep the stock path,
still correct because the caller's 4D mask already encodes the pattern.
"""
from __future__ import annotations

import importlib

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SELF_ONLY_KWARG = "self_only_queries"
_PREFIX = "pecrs_candidates_"


def candidate_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-function signature: query [B, Hq, K, D], key/value [B, Hkv, L, D];
    returns ([B, K, Hq, D], None)."""
    K = kwargs.pop(SELF_ONLY_KWARG, None)
    # Dropout (training) and logit soft-capping (Gemma-2) are the stock kernel's business.
    if not K or dropout or kwargs.get("softcap") is not None:
        return _fallback(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    B, Hq, Q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    if Q != K or L < K:
        raise ValueError(f"{SELF_ONLY_KWARG}={K} expects the query block to be the last {K} keys (got {Q} queries, {L} keys)")
    Lc = L - K
    group = Hq // Hkv                       # grouped-query attention: `group` query heads share a key head
    scale = scaling if scaling is not None else D ** -0.5
    # Heads of one group stacked, so the context keys are not repeated; the scale folded into q.
    # Every pass over the [B, Hq, K, Lc] scores costs about what a matmul does on a CPU, so both
    # parts are written into one float32 buffer (no concatenation, no repeated self keys).
    q = (query * scale).reshape(B, Hkv, group * K, D)
    scores = torch.empty(B, Hq, K, Lc + 1, dtype=torch.float32, device=query.device)
    scores[..., :Lc] = torch.matmul(q, key[:, :, :Lc].transpose(-1, -2)).view(B, Hq, K, Lc)
    if attention_mask is not None:
        scores[..., :Lc] += attention_mask[:, :, :, :Lc]
    k_self = key[:, :, Lc:].unsqueeze(2)                                            # [B, Hkv, 1, K, D]
    scores[..., Lc:] = (q.view(B, Hkv, group, K, D) * k_self).sum(-1, keepdim=True).view(B, Hq, K, 1)
    p = torch.softmax(scores, dim=-1).to(value.dtype)
    p_ctx = p[..., :Lc].view(B, Hkv, group * K, Lc)
    out = (torch.matmul(p_ctx, value[:, :, :Lc]).view(B, Hkv, group, K, D)
           + p[..., Lc:].view(B, Hkv, group, K, 1) * value[:, :, Lc:].unsqueeze(2))
    out = out.view(B, Hq, K, D)
    return out.transpose(1, 2).contiguous(), None


def _fallback(module):
    return _stock_attention(type(module), module.config._attn_implementation.removeprefix(_PREFIX))


_STOCK: dict = {}  # (module type, name) -> function; a plain dict, which torch.compile traces as is


def _stock_attention(module_type, name: str):
    """The implementation the model had: a registered one (sdpa), or the model file's eager."""
    key = (module_type, name)
    if key not in _STOCK:
        _STOCK[key] = (getattr(importlib.import_module(module_type.__module__), "eager_attention_forward")
                       if name == "eager" else ALL_ATTENTION_FUNCTIONS[name])
    return _STOCK[key]


def use_candidate_attention(model) -> bool:
    """Point `model` (a transformers PreTrainedModel) at `candidate_attention`, keeping its current
    implementation as the fallback. Returns False, changing nothing, for implementations that take
    no arbitrary mask (flash attention), for GPT-2 with `reorder_and_upcast_attn`, or when already
    done. Code that compares `config._attn_implementation` with "sdpa"/"eager" sees the new name."""
    current = model.config._attn_implementation or "eager"
    if current.startswith(_PREFIX) or current not in ("eager", "sdpa"):
        return False
    if getattr(model.config, "reorder_and_upcast_attn", False):
        return False  # GPT-2's upcast path is chosen by the name "eager": keep that name
    name = _PREFIX + current
    if name not in ALL_ATTENTION_FUNCTIONS:
        ALL_ATTENTION_FUNCTIONS.register(name, candidate_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    for config in _configs(model):
        config._attn_implementation = name
    return True


def _configs(model):
    """The model's config and any sub-configs carrying their own attention setting."""
    seen = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and all(config is not c for c in seen):
            seen.append(config)
    return seen


def use_stock_attention(model) -> None:
    """Undo `use_candidate_attention` (for before/after measurements): back to the implementation
    the model had; the keyword is then ignored and the 4D mask alone shapes the attention."""
    for config in _configs(model):
        name = config._attn_implementation or ""
        if name.startswith(_PREFIX):
            config._attn_implementation = name.removeprefix(_PREFIX)
