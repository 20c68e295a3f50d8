"""Which base weights a checkpoint was trained on, in 16 hex digits.

A checkpoint keeps only what trains (LoRA, special-token rows, heads) and rebuilds the frozen
backbone from `model.backbone`. Two LMs of the same architecture and shapes (a base model and its
instruct tuning, a re-quantized copy, a folder whose files changed) load without a shape error,
yet the adapter was fitted to one of them, and the item vectors saved with a checkpoint were
encoded by it. The fingerprint lets loading tell them apart.
"""
from __future__ import annotations

import hashlib

import torch


def backbone_fingerprint(causal_lm: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of the first row of every floating-point weight matrix of
    `causal_lm`, in registration order, each rounded to bfloat16 first: the same weights loaded in
    float32 or bfloat16 give the same fingerprint; any training or re-quantization changes it.
    Call it on the plain LM, before special tokens are added and LoRA wraps it."""
    digest = hashlib.sha256()
    for param in causal_lm.parameters():   # tied weights once
        if param.ndim >= 2 and param.is_floating_point():
            row = param.detach()[0].reshape(-1).to("cpu", torch.bfloat16)
            digest.update(row.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
