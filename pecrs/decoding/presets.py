"""The decoding strategies of Table 8 (paper §5.1) and `resolve`: a name -> ``model.generate`` kwargs.

Plain dicts only, no torch, so that checking a strategy name (a config, a CLI flag) stays cheap.

Strategies (``PRESETS``)
------------------------
Table 8's caption: "Except greedy decoding, all other techniques use a beam width of 4". Facts taken from
the authors' public code (Ravoxsg/efficient_unified_crs, ``engine_validation.py::make_generation_embeds``
and the argparse defaults in ``main.py``):

* three methods only: ``beam_search``, ``diverse_beam_search``, ``top_k_sampling`` (default), all with
  ``num_return_sequences=1`` and ``max_new_tokens = utt_max_length = 64``;
* ``top_k_sampling`` is ``do_sample=True`` *with* ``num_beams`` (i.e. Hugging Face beam-sample), ``top_k=50``
  and ``temperature = sampling_temperature = 1.15``;
* ``diverse_beam_search`` passes ``num_beams``, ``num_beam_groups`` and ``diversity_penalty``; the defaults
  are ``num_beams=2``, ``num_beam_groups=2``, ``diversity_penalty=1.0``;
* no greedy and no nucleus branch exists in that code.

Choices made here:

* ``greedy``: ``num_beams=1``, no sampling.
* ``beam``: ``num_beams=4``.
* ``diverse_beam_{0.5,1.0,1.5}``: ``num_beams=4`` (caption) split into ``num_beam_groups=2`` groups of 2
  beams: the caption only fixes the beam width, so the group count stays at the code's default (2).
  ``{"num_beams": 4, "num_beam_groups": 4, "diversity_penalty": x}`` (4 groups of 1 beam) is the other
  reading; pass such a dict to :func:`resolve`/:func:`generate` to use it.
* ``top_k_{25,50,75}``: beam-sample as the authors' ``top_k_sampling`` branch (``do_sample=True``,
  ``temperature=1.15``) with the caption's ``num_beams=4`` (the code's default is 2); ``top_p=1.0`` is set so that a checkpoint's
  ``generation_config`` (e.g. SmolLM2/Llama ship ``top_p=0.9``) cannot add a nucleus cut.
* ``nucleus_{0.90,0.95,0.99}``: not in the public code. Beam-sample with ``num_beams=4`` (caption),
  ``top_k=0`` (pure nucleus as in Holtzman et al.; Hugging Face would otherwise silently apply its default
  ``top_k=50``) and ``temperature=1.0``. The 1.15 temperature belongs to the authors' top-k branch only;
  Table 8 also reports nucleus p=0.99 as much *less* diverse than top-k 50 (Dist@2 0.35 vs 0.65), which
  would not happen with the same 1.15 temperature and no top-k cut.
* aliases: ``top_k`` → ``top_k_50`` (the paper's default, §4.1), ``nucleus`` → ``nucleus_0.95``,
  ``diverse_beam`` → ``diverse_beam_1.0``.

Beyond the paper, `without_repeats` adds transformers' ``no_repeat_ngram_size`` to any strategy
(``inference.no_repeat_ngram``; 0, the default, leaves the paper's decoding as it is): a model trained
briefly can loop on a phrase ("It's a comedy, but it's also a comedy. It's a comedy, ...") until the
64-token limit, and a reply that never repeats an n-gram cannot.
"""
from __future__ import annotations

import copy

#: temperature of the authors' ``top_k_sampling`` branch (``--sampling_temperature`` default).
SAMPLING_TEMPERATURE = 1.15
#: beam width of every strategy but greedy (Table 8's caption).
BEAM_WIDTH = 4
#: number of beam groups for diverse beam search (authors' ``--num_beam_groups`` default).
NUM_BEAM_GROUPS = 2


def _top_k(k: int) -> dict:
    return {"do_sample": True, "num_beams": BEAM_WIDTH, "top_k": k, "top_p": 1.0,
            "temperature": SAMPLING_TEMPERATURE}


def _nucleus(p: float) -> dict:
    return {"do_sample": True, "num_beams": BEAM_WIDTH, "top_p": p, "top_k": 0, "temperature": 1.0}


def _diverse(penalty: float) -> dict:
    return {"do_sample": False, "num_beams": BEAM_WIDTH, "num_beam_groups": NUM_BEAM_GROUPS,
            "diversity_penalty": penalty}


PRESETS: dict[str, dict] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "beam": {"do_sample": False, "num_beams": BEAM_WIDTH},
    "diverse_beam_0.5": _diverse(0.5),
    "diverse_beam_1.0": _diverse(1.0),
    "diverse_beam_1.5": _diverse(1.5),
    "top_k_25": _top_k(25),
    "top_k_50": _top_k(50),
    "top_k_75": _top_k(75),
    "nucleus_0.90": _nucleus(0.90),
    "nucleus_0.95": _nucleus(0.95),
    "nucleus_0.99": _nucleus(0.99),
}

ALIASES: dict[str, str] = {
    "top_k": "top_k_50",
    "nucleus": "nucleus_0.95",
    "diverse_beam": "diverse_beam_1.0",
}

# generate kwargs whose values transformers accepts unchecked and fails on deep inside generate
# (num_beams 0: a division by zero at the first reply): key -> (kind, test, what the test asks).
# The sampling ones are checked only when the strategy samples: without it transformers ignores them.
_NUMBERS = {"num_beams": (int, lambda v: v >= 1, ">= 1"), "num_beam_groups": (int, lambda v: v >= 1, ">= 1"),
            "min_new_tokens": (int, lambda v: v >= 0, ">= 0"),
            "no_repeat_ngram_size": (int, lambda v: v >= 0, ">= 0"),
            "diversity_penalty": (float, lambda v: 0 <= v < float("inf"), ">= 0"),
            "repetition_penalty": (float, lambda v: 0 < v < float("inf"), "> 0")}
_SAMPLING_NUMBERS = {"top_k": (int, lambda v: v >= 0, ">= 0"),
                     "temperature": (float, lambda v: 0 < v < float("inf"), "> 0"),
                     "top_p": (float, lambda v: 0 <= v <= 1, "in [0, 1]")}


def _check_numbers(kwargs: dict) -> None:
    """Each number of `kwargs` of its kind and range (a ValueError naming it); an integer given for
    a float setting becomes a float, as transformers' logits processors require (temperature 2)."""
    checked = {**_NUMBERS, **(_SAMPLING_NUMBERS if kwargs.get("do_sample") else {})}
    for key, (kind, test, asked) in checked.items():
        value = kwargs.get(key)
        if value is None:
            continue
        of_kind = isinstance(value, int) or (kind is float and isinstance(value, float))
        if isinstance(value, bool) or not of_kind or not test(value):
            what = "an integer" if kind is int else "a number"
            raise ValueError(f"decoding {key} must be {what} {asked}, got {value!r}")
        if kind is float:
            kwargs[key] = float(value)


# keys this module sets itself; a strategy dict must not carry them
_RESERVED = {"inputs_embeds", "attention_mask", "input_ids", "max_new_tokens", "pad_token_id",
             "eos_token_id", "logits_processor", "stopping_criteria"}


def resolve(strategy: str | dict) -> dict:
    """Generate kwargs for a preset name, an alias, or a dict of kwargs (returned as a copy)."""
    if isinstance(strategy, dict):
        kwargs = copy.deepcopy(strategy)
    elif isinstance(strategy, str):
        name = ALIASES.get(strategy, strategy)
        if name not in PRESETS:
            valid = ", ".join(sorted(PRESETS) + sorted(ALIASES))
            raise ValueError(f"unknown decoding strategy {strategy!r}; valid names: {valid}")
        kwargs = copy.deepcopy(PRESETS[name])
    else:
        raise TypeError(f"strategy must be a preset name or a dict of generate kwargs, got {type(strategy).__name__}")
    bad = _RESERVED & set(kwargs)
    if bad:
        raise ValueError(f"strategy must not set {sorted(bad)}: pass them to generate() instead")
    _check_numbers(kwargs)
    if kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("num_return_sequences must be 1 (one response per row)")
    groups = kwargs.get("num_beam_groups", 1) or 1
    if groups > 1:
        beams = kwargs.get("num_beams", 1) or 1
        if beams % groups:
            raise ValueError(f"num_beams ({beams}) must be divisible by num_beam_groups ({groups})")
        if kwargs.get("do_sample"):
            raise ValueError("diverse beam search (num_beam_groups > 1) does not sample: set do_sample=False")
    return kwargs


def without_repeats(strategy: str | dict, no_repeat_ngram: int) -> str | dict:
    """`strategy` with no n-gram of `no_repeat_ngram` tokens generated twice in one reply (counted over
    the reply's own tokens: generation from embeddings passes processors no prompt ids). 0 returns
    `strategy` itself; a dict that sets its own ``no_repeat_ngram_size`` keeps it."""
    if not no_repeat_ngram:
        return strategy
    return {"no_repeat_ngram_size": int(no_repeat_ngram), **resolve(strategy)}
