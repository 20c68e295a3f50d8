"""The item side of PECRS and its scores (§3.2-3.3): the item encoder of Eq. 1 (learned pooling of the
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
    keys [B, C, d] (each row's own candidates, training's positives and shared negatives) -> [B, C].
    The whole catalog is scored by a search index instead (pecrs.retrieval.ExactIndex: the same
    logits by one matrix product of unit vectors), at evaluation as in serving."""
    return -angular_distance(queries.unsqueeze(1), keys) / temperature


def recall_from_cosine(cos: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3's logit from a cosine already computed (pecrs.retrieval's indexes search by cosine)."""
    return -_angular_from_cosine(cos) / temperature


def two_layer_mlp(d_in: int, d_out: int) -> nn.Sequential:
    """Linear, ReLU, Linear: f (d -> d, shared by the recall query and re-ranking) and g (d -> 1)."""
    return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_out))


class ItemHead(nn.Module):
    """h_item of Eq. 1: a residual MLP then a projection, from pooled LM states [N, d] to v_j [N, d].
    §3.2 says only "a MLP layer"; the residual form is the authors' released code's."""

    def __init__(self, d: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return self.out(x + self.mlp(x))


class ItemEncoder(nn.Module):
    """Eq. 1: v_j = h_item(w^T I_j), with w a learned weight per token position. The weights
    are normalised over the item's real tokens (w^T I_j / sum of w over them): with w at its
    initial ones that is mean pooling, and an item's vector does not grow with its length.
    pooling=False (Table 5 "w/o item pooling") takes the last item token's state instead;
    head=False leaves out h_item.

    standardize=True (beyond the paper, `model.item_standardize`) centres and scales the pooled
    state per dimension, (w^T I_j - mu) / sigma, with mu and sigma statistics of the training
    catalog fixed before training (`fit_standardization`) and saved with the heads. An affine map
    in front of h_item, so the model can express nothing new; what it changes is how fast h_item
    learns. LM states are anisotropic: SmolLM2's mean-pooled item states share a mean vector of
    norm 30 (the states' norm is 32.5, two outlier dimensions), so all items start ~0.9
    cosine-similar and one pass of recall training at lr 1e-4 does not pull them apart
    (docs/results.md, "Why recall barely learned")."""

    def __init__(self, d: int, max_tokens: int, pooling: bool = True, head: bool = True,
                 standardize: bool = False):
        super().__init__()
        self.pooling = pooling
        self.pool_weights = nn.Parameter(torch.ones(max_tokens))  # ones: starts as mean pooling
        self.head = ItemHead(d) if head else nn.Identity()
        self.standardize = standardize
        if standardize:  # identity until fit_standardization; saved in heads.safetensors
            self.register_buffer("pooled_mean", torch.zeros(d))
            self.register_buffer("pooled_scale", torch.ones(d))

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """w^T I_j / sum(w) over real tokens: states [N, L, d], mask [N, L] (right-padded, as
        `ItemStore` pads) -> pooled states [N, d] (before standardizing)."""
        states = states.to(self.pool_weights.dtype)
        if self.pooling:
            w = self.pool_weights[: states.shape[1]] * mask
            return torch.einsum("nl,nld->nd", w, states) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        last = mask.long().sum(-1).clamp_min(1) - 1  # the state of the last item token
        return states[torch.arange(states.shape[0], device=states.device), last]

    @torch.no_grad()
    def fit_standardization(self, pooled: torch.Tensor) -> None:
        """mu and sigma from the pooled states [N, d] of a catalog (sigma floored at 1e-3 of its
        largest value, and at 1e-6, so a constant dimension is not blown up)."""
        if not self.standardize:
            raise ValueError("this item encoder was built without standardize")
        if pooled.shape[0] < 2:
            raise ValueError(f"item standardization needs a catalog of at least 2 items, not {pooled.shape[0]}")
        pooled = pooled.float()
        scale = pooled.std(0)
        self.pooled_mean.copy_(pooled.mean(0))
        self.pooled_scale.copy_(scale.clamp_min(max(1e-3 * float(scale.max()), 1e-6)))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states [N, L, d] (LM token states of item texts), mask [N, L] -> item vectors [N, d]."""
        pooled = self.pool(states, mask)
        if self.standardize:
            pooled = (pooled - self.pooled_mean) / self.pooled_scale
        return self.head(pooled)
