"""Decoding strategies for response generation (paper §5.1, Table 8).

PECRS generates the recommender response from left-padded ``inputs_embeds`` (item vectors are injected
as embeddings, so there are no ``input_ids``). This package names the strategies compared in Table 8,
turns a name into ``model.generate`` keyword arguments, and runs them, returning only the new tokens.

One module a concern, in the order a call goes through them:

* presets.py: the strategies of Table 8 (`PRESETS`, `ALIASES`) and `resolve` (a name -> ``generate``
  kwargs), `without_repeats` (any strategy, no n-gram twice). It needs no torch:
  `pecrs.decoding.presets` lists and checks strategy names cheaply.
* generation.py: `generate`, the entry point: checks the inputs, seeds, runs the strategy.
* diverse.py: diverse (group) beam search with Hamming diversity, built on transformers' beam search.
* prefill.py: `prompt_cache_kwargs`, the prompt run once per row for all its beams (and groups).
* outputs.py: from ``model.generate`` output to response ids (pad/EOS ids, `strip_special`).
"""
from importlib import import_module

from .presets import ALIASES, BEAM_WIDTH, NUM_BEAM_GROUPS, PRESETS, SAMPLING_TEMPERATURE, resolve, without_repeats

__all__ = [
    "PRESETS",
    "ALIASES",
    "SAMPLING_TEMPERATURE",
    "BEAM_WIDTH",
    "NUM_BEAM_GROUPS",
    "resolve",
    "without_repeats",
    "generate",
    "diverse_beam_search",
    "diverse_beam_groups",
    "hamming_penalty",
    "HammingDiversityLogitsProcessor",
    "StepChoiceRecorder",
    "strip_special",
]

# The names below need torch and transformers (seconds to import), so they load on first use, as in
# pecrs/__init__.py: `from pecrs.decoding import PRESETS` (a config or CLI check) stays cheap.
_TORCH_NAMES = {
    "generate": "generation",
    "diverse_beam_search": "diverse",
    "diverse_beam_groups": "diverse",
    "hamming_penalty": "diverse",
    "HammingDiversityLogitsProcessor": "diverse",
    "StepChoiceRecorder": "diverse",
    "strip_special": "outputs",
}


def __getattr__(name):
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_TORCH_NAMES[name]}"), name)
    globals()[name] = value  # bound once: later look-ups (and monkeypatching) see a plain attribute
    return value
