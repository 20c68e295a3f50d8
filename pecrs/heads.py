"""The item side of PECRS and its scores (§3.3): the item encoder of Eq. 1 (learned pooling of the
LM's token states of an item text, then the residual head h_item), the two-layer MLPs that build
the projection f and the rerank head g, and the angular distance behind Eq. 3's recall logits.

PECRS (pecrs.model) holds one ItemEncoder and the two MLPs; nothing here runs the LM.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _angular_from_cosine(cos: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((2 * (1 - cos)).clamp_min(1e-12))


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(2 (1 - cos(a, b))) along the last dim, broadcasting (§3.3)."""
    return _angular_from_cosine(F.cosine_similarity(a, b, dim=-1))


def recall_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3 logits: -angular(f(d_t), v) / temperature. queries [B, d] (already f-projected);
    keys [B, C, d] (each row's own candidates) -> [B, C], or [N, d] (scored against every
    query, one matrix product) -> [B, N]."""
    if keys.dim() == 2:
        return recall_from_cosine(F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T, temperature)
    return -angular_distance(queries.unsqueeze(1), keys) / temperature


def recall_from_cosine(cos: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3's logit from a cosine already computed (pecrs.retrieval's indexes search by cosine)."""
    return -_angular_from_cosine(cos) / temperature


def two_layer_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Linear, ReLU, Linear: f (d -> d, shared by the recall query and re-ranking) and g (d -> 1)."""
    return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_out))


class ItemHead(nn.Module):
    """h_item of Eq. 1: a residual MLP then a projection, from pooled LM states [N, d] to v_j [N, d]."""

    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return self.out(x + self.mlp(x))


class ItemEncoder(nn.Module):
    """Eq. 1: v_j = h_item(w^T I_j), with w a learned weight per token position.
    pooling=False (Table 5 "w/o item pooling") takes the last item token's state instead;
    head=False leaves out h_item."""

    def __init__(self, d: int, max_tokens: int, pooling: bool = True, head: bool = True):
        super().__init__()
        self.pooling = pooling
        self.pool_weights = nn.Parameter(torch.ones(max_tokens))  # ones: starts as mean pooling
        self.head = ItemHead(d) if head else nn.Identity()

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states [N, L, d] (LM token states of item texts), mask [N, L] -> item vectors [N, d]."""
        states = states.to(self.pool_weights.dtype)
        if self.pooling:
            w = self.pool_weights[: states.shape[1]] * mask
            pooled = torch.einsum("nl,nld->nd", w, states) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        else:  # the state of the last item token
            last = mask.long().sum(-1).clamp_min(1) - 1
            pooled = states[torch.arange(states.shape[0], device=states.device), last]
        return self.head(pooled)
