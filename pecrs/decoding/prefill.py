"""`prompt_cache_kwargs`: run a prompt once for all the beams that continue it.

transformers' beam search copies each prompt `num_beams` times before its first forward pass, so
the paper's decoding (beam-sample with 4 beams, Table 8) computes every context 4 times, and
diverse beam search once more per group. Giving `generate` a KV cache of the prompt, already
repeated for the beams, leaves it only the prompt's last position to run per beam.
"""
from __future__ import annotations

import torch

from ..backbone import cache_kwarg_name, output_cache


@torch.no_grad()
def prompt_cache_kwargs(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, copies: int) -> dict:
    """`generate` keyword arguments holding the KV cache of every prompt position but the last,
    computed once per row and repeated for its `copies` beams (row b's copies at b * copies ...
    b * copies + copies - 1, the layout of transformers' beam search); {} for a one-position
    prompt, which has nothing to share.

    inputs_embeds [B, L, d] LEFT-padded, attention_mask [B, L]; `generate`, given the whole prompt
    and this cache, runs position L - 1 only. Positions are the ones `generate` derives from the
    mask (cumsum(mask) - 1), so GPT-2's absolute positions agree, and the tokens are stock beam
    search's up to float rounding (tests/test_decoding.py). Speed: benchmarks/beam_prefill.py."""
    if inputs_embeds.shape[1] < 2:
        return {}
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(inputs_embeds=inputs_embeds[:, :-1], attention_mask=attention_mask[:, :-1],
                position_ids=positions[:, :-1], use_cache=True)
    cache = output_cache(out)
    cache.batch_repeat_interleave(copies)
    return {cache_kwarg_name(model): cache}
