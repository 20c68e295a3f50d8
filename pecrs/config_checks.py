"""The checks a config value passes (`check_value`): the dataclass type hint, then what a type
cannot say, as plain tables: numeric bounds, fixed choices, keys that must not be empty. A value
that fails is a `ConfigError` naming the key, the value and what was expected.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing

from .data import Item
from .decoding import ALIASES, PRESETS  # the preset names only: no torch


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type, out of range or not one of the allowed values."""


# Types come from the dataclass hints; these tables add what a type cannot say. A bound is a list
# of comparisons that must all hold; None values of optional fields are not bounded.

_BOUNDS: dict[str, str] = {
    "model.lora_r": ">= 1", "model.lora_alpha": "> 0", "model.lora_dropout": ">= 0, < 1",
    "model.item_max_tokens": ">= 1", "model.recall_temperature": "> 0",
    "model.context_max_tokens": ">= 1", "model.response_max_tokens": ">= 1",
    "train.max_train_samples": ">= 1", "train.max_eval_samples": ">= 1",   # null: every sample
    "train.epochs": ">= 1", "train.batch_size": ">= 1", "train.grad_accum": ">= 1",
    "train.lr": "> 0", "train.lr_reference_batch": ">= 1", "train.warmup_epochs": ">= 0",
    "train.warmup_steps": ">= 0", "train.weight_decay": ">= 0", "train.special_token_lr_scale": "> 0",
    "train.alpha": ">= 0", "train.beta": ">= 0", "train.gamma": ">= 0",
    "train.m_train": ">= 1", "train.recall_pool": ">= 1", "train.hard_negatives": ">= 0",
    "train.hard_negative_depth": ">= 1", "train.hard_negatives_from_epoch": ">= 1", "train.rerank_temperature": "> 0",
    "train.label_smoothing": ">= 0, < 1",
    "train.seed": f">= 0, <= {2**32 - 1}",      # numpy's seed range
    "train.eval_every_epochs": ">= 1",
    "train.checkpoint_every": ">= 0", "train.max_train_minutes": "> 0",
    "inference.m_inference": ">= 1", "inference.batch_size": ">= 1", "inference.rerank_chunk_size": ">= 1",
    "inference.no_repeat_ngram": ">= 0",
}
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
ITEM_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Item) if f.name != "id")
_CHOICES: dict[str, tuple[str, ...]] = {
    "model.item_encoding": ("cached", "adapted"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "train.frozen_dtype": ("auto", "float32", "bfloat16"),
    "train.step_mode": ("auto", "eager", "compile", "cudagraphs"),
    "train.loss_normalization": ("batch", "targets"),
    "train.redial_mentions": ("pecrs", "all"),
    "inference.decoding": tuple(sorted(ALIASES) + sorted(PRESETS)),
    "inference.dtype": ("auto", "float32", "bfloat16"),
}
_NON_EMPTY = {"model.backbone", "train.dataset", "train.train_split", "model.item_fields",
              "model.lora_target_modules"}
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def show_value(value) -> str:
    text = repr(value)
    return (text if len(text) <= 60 else text[:57] + "...") + f" ({type(value).__name__})"


def _coerce(value, hint):
    """(True, value) if `value` fits `hint` (int -> float and float text -> float converted),
    else (False, None). Hints are those of the dataclasses above: a base type, list[str], X | None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return True, None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                ok, out = _coerce(value, arg)
                if ok:
                    return ok, out
        return False, None
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            return False, None
        out = []
        for x in value:
            ok, converted = _coerce(x, inner)
            if not ok:
                return False, None
            out.append(converted)
        return True, out
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        # YAML 1.1 reads 3e-5 (no dot) as a string; take it as the number it spells.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return True, float(value)
        return False, None
    if hint is str:
        return isinstance(value, str), value
    raise TypeError(f"no check for config type {hint!r}")


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(key: str, value, hint):
    """`value` checked for config key `key` ("section.name") of type `hint`; the value to store."""
    ok, value_out = _coerce(value, hint)
    if not ok:
        # `train.dev_split=` on a command line is YAML's null: say how to write an empty string.
        empty = " (an empty value is null in YAML; write '' for an empty string)" if value is None and hint is str else ""
        raise ConfigError(f"config {key}: expected {_describe(hint)}, got {show_value(value)}{empty}")
    if value_out is None:
        return None
    bound = _BOUNDS.get(key)
    if bound and not all(_COMPARE[op](value_out, float(limit))      # (NaN fails every comparison)
                         for op, limit in (part.split() for part in bound.split(", "))):
        raise ConfigError(f"config {key}: expected {_describe(hint)} {bound}, got {show_value(value)}")
    if isinstance(value_out, float) and not math.isfinite(value_out):   # .inf passes "> 0"
        raise ConfigError(f"config {key}: expected a finite number, got {show_value(value)}")
    if key in _NON_EMPTY and not (value_out if isinstance(value_out, list) else str(value_out).strip()):
        raise ConfigError(f"config {key}: must not be empty, got {show_value(value)}")
    choices = _CHOICES.get(key)
    if choices is not None and value_out not in choices:
        raise ConfigError(f"config {key}: expected one of {', '.join(choices)}, got {show_value(value)}")
    if key == "model.item_fields":
        bad = [x for x in value_out if x not in ITEM_FIELD_NAMES]
        if bad:
            raise ConfigError(f"config {key}: unknown item field(s) {bad}; "
                              f"expected names from {', '.join(ITEM_FIELD_NAMES)}")
        twice = sorted({x for x in value_out if value_out.count(x) > 1})
        if twice:   # the item text would repeat it (and Table 6's variants are named by their fields)
            raise ConfigError(f"config {key}: field(s) {twice} given twice, got {show_value(value)}")
    return value_out

