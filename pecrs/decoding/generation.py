"""`generate`: decode responses from left-padded ``inputs_embeds`` with a strategy of presets.py.

Positions
---------
With a 2-D ``attention_mask``, transformers 5 derives ``position_ids`` from the mask in ``generate``
(``cumsum(mask) - 1``) for every model whose ``forward`` accepts ``position_ids`` (GPT-2 and Llama
included), so left-padded batched decoding matches row-by-row decoding; this module therefore does not
pass ``position_ids`` itself. (For RoPE models such as Llama a constant shift of positions does not change
the output anyway; GPT-2's absolute position embeddings are what make this matter.)
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .diverse import diverse_beam_search
from .outputs import new_tokens, special_ids, strip_special
from .prefill import prompt_cache_kwargs
from .presets import resolve

# transformers warns that no_repeat_ngram_size with inputs_embeds sees the new tokens only: that is
# the intent here (no phrase twice in the reply; the context may well repeat itself), so not news.
# (A module-level filter, not catch_warnings per call: that is not thread-safe and resets the
# registry of warnings already shown. pytest, which resets filters per test, has it in pyproject.)
warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's RNGs for the call and restore the previous RNG state afterwards."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:  # also save and restore the accelerator's RNG (torch.manual_seed seeds every device)
        fork = torch.random.fork_rng(devices=[device], device_type=device.type)
    with fork:
        torch.manual_seed(seed)
        yield


class StopsAsOneEos(LogitsProcessor):
    """Every id that ends a reply as one token: the first (EOS) gets the log-sum-exp of their
    logits and the others -inf, so the probability of ending here is unchanged. transformers runs
    it after its own processors but before temperature and top-k: an EOS that one of those banned
    (`min_new_tokens` bans EOS only) stays banned, and so does ending."""

    def __init__(self, stop_ids: list[int]):
        self.stop_ids = torch.tensor(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = self.stop_ids.to(scores.device)
        banned = scores[:, ids[0]] == float("-inf")
        ending = torch.logsumexp(scores[:, ids], dim=-1).masked_fill(banned, float("-inf"))
        scores[:, ids[1:]] = float("-inf")
        scores[:, ids[0]] = ending
        return scores


class TokenBudget(LogitsProcessor):
    """Bans `token_id` from a row once the row has generated it `limit` times (one comparison
    and one masked write per step for the whole batch, beams included: no loop over rows).
    transformers passes processors the tokens generated so far (none of the prompt when
    generating from embeddings), so the count is of the reply's own tokens."""

    def __init__(self, token_id: int, limit: int):
        self.token_id, self.limit = int(token_id), int(limit)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        spent = (input_ids == self.token_id).sum(1) >= self.limit
        column = scores[:, self.token_id]
        scores[:, self.token_id] = torch.where(spent, torch.full_like(column, float("-inf")), column)
        return scores


@torch.no_grad()
def generate(model, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, strategy: str | dict = "top_k",
             max_new_tokens: int = 64, pad_token_id: int | None = None, eos_token_id=None,
             seed: int | None = None, token_budget: dict[int, int] | None = None) -> list[list[int]]:
    """Decode responses from LEFT-padded ``inputs_embeds`` [B, L, d] with a 2-D ``attention_mask`` [B, L].

    ``model`` is a Hugging Face causal LM (or a peft model wrapping one). ``strategy`` is a preset name, an
    alias, or a dict of ``generate`` kwargs (see :data:`PRESETS`). ``pad_token_id``/``eos_token_id`` default
    to the model's generation config. ``seed`` seeds torch's RNGs for this call only (the global RNG state
    is restored afterwards), which makes the sampling strategies reproducible.

    ``token_budget`` {token id: n} lets a row generate each listed token at most n times (PECRS: no
    more [ITEM] slots than items injected, `PECRS.generate`).

    Returns the new token ids of each row, cut at the first EOS, with EOS and padding removed.
    """
    if inputs_embeds.dim() != 3 or attention_mask.dim() != 2 or attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError("expected inputs_embeds [B, L, d] and a 2-D attention_mask [B, L]")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("inputs must be LEFT-padded (attention_mask[:, -1] must be 1 for every row)")
    kwargs = resolve(strategy)
    pad, eos = special_ids(model, pad_token_id, eos_token_id)
    processors = [TokenBudget(token, limit) for token, limit in (token_budget or {}).items()]
    if kwargs.get("do_sample") and (kwargs.get("num_beams") or 1) > 1 and len(eos) > 1:
        # transformers' beam-sample draws (1 + number of EOS ids) x num_beams candidates a step and
        # keeps the best num_beams of them. A reply has ~20 ids that end it (tokens.reply_stop_ids;
        # SmolLM2: 21): 88 draws from a top-50 pool of 4 beams always include the best ones, and the
        # "sampling" decoded exactly as beam search, whatever the seed. One EOS that carries the
        # probability of all of them gives back the 2 x num_beams draws of a one-EOS model (the paper's).
        processors.append(StopsAsOneEos(eos))
        eos = eos[:1]
    with _seeded(seed, inputs_embeds.device):
        if (kwargs.get("num_beam_groups") or 1) > 1:
            kwargs.setdefault("diversity_penalty", 0.0)
            return diverse_beam_search(model, inputs_embeds, attention_mask, max_new_tokens=max_new_tokens,
                                       pad_token_id=pad, eos_token_id=eos, processors=processors, **kwargs)
        kwargs.pop("num_beam_groups", None)
        kwargs.pop("diversity_penalty", None)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if (kwargs.get("num_beams") or 1) > 1:
            kwargs.update(prompt_cache_kwargs(model, inputs_embeds, attention_mask, kwargs["num_beams"]))
        out = model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos or None,
                             num_return_sequences=1, **kwargs)
    if not isinstance(out, torch.Tensor):
        out = out.sequences
    return strip_special(new_tokens(out, inputs_embeds.shape[1], max_new_tokens), pad, eos)
