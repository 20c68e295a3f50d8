"""Run configuration: plain data, read from YAML, overridable from the command line.

One dataclass holds every knob of a run (model, data, optimisation). Its defaults are the
paper's settings (§4.1); `configs/*.yaml` only list what differs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data import DEFAULT_ITEM_FIELDS


@dataclass
class ModelConfig:
    backbone: str = "smollm2-135m-instruct"  # a name known to pecrs.backbone or a local HF folder
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: the attention projections of the architecture
    item_fields: list[str] = field(default_factory=lambda: list(DEFAULT_ITEM_FIELDS))
    item_max_tokens: int = 128
    # "cached": item token states come once from the frozen base LM and are reused every step;
    # "adapted": items pass through the LoRA-adapted LM (no gradient), as the paper does.
    item_encoding: str = "cached"
    item_pooling: bool = True      # Table 5 "w/o item pooling": use the last token state instead
    item_head: bool = True         # Table 5 "w/o item head": no h_item MLP
    recall_temperature: float = 0.1  # scores are -angular_distance / temperature
    context_max_tokens: int = 256
    response_max_tokens: int = 64


@dataclass
class TrainConfig:
    dataset: str = "../shared/datasets/inspired"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    max_train_samples: int | None = None   # a slice of the train split (tiny runs)
    max_eval_samples: int | None = None
    epochs: int = 20
    batch_size: int = 2                     # per device
    grad_accum: int = 1                     # effective batch = batch_size * grad_accum * devices
    lr: float = 3e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.0
    alpha: float = 0.15                     # recall loss weight
    beta: float = 0.85                      # rerank loss weight
    gamma: float = 1.0                      # generation loss weight
    m_train: int = 150                      # negatives per batch
    m_inference: int = 700                  # candidates retrieved then re-ranked
    share_negatives_batch: bool = True      # Table 5 ablations
    share_negatives_tasks: bool = True
    mixed_precision: str = "auto"           # "auto": bf16 on GPUs that have it, else none
    seed: int = 42
    eval_every_epochs: int = 1
    eval_generate: bool = False             # dev selection uses recall only (§4.1); test generates
    decoding: str = "top_k"                 # see pecrs.decoding
    eval_batch_size: int = 8
    checkpoint_every: int = 200             # batches between mid-epoch checkpoints (0: epoch ends only)
    max_train_minutes: float | None = None  # stop (resumably) once training has run this long


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RunConfig":
        unknown = set(raw) - {"model", "train"}
        if unknown:
            raise ValueError(f"unknown config section(s): {sorted(unknown)} (expected 'model', 'train')")
        return cls(model=_build(ModelConfig, raw.get("model", {}), "model"),
                   train=_build(TrainConfig, raw.get("train", {}), "train"))

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "RunConfig":
        """Read a YAML config, then apply `section.key=value` overrides (values parsed as YAML)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        for item in overrides:
            key, sep, value = item.partition("=")
            section, dot, name = key.partition(".")
            if not sep or not dot:
                raise ValueError(f"override '{item}' must look like section.key=value, e.g. train.epochs=2")
            raw.setdefault(section, {})[name] = yaml.safe_load(value)
        config = cls.from_dict(raw)
        # A relative dataset path in a config file is relative to the working directory, as on
        # the command line; keep it as written so runs are portable.
        return config


def _build(kind, values: dict, section: str):
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown key(s) in config section '{section}': {sorted(unknown)}; "
                         f"known: {sorted(names)}")
    return kind(**values)


def dumps(config: RunConfig) -> str:
    return json.dumps(config.to_dict(), indent=2)
