"""Which dataset a config names, and the keys that say whether a stored number is still current.

A part's key hashes everything that decides its numbers: the config (its dataset replaced by a
fingerprint of the dataset's files), the training run it uses, its own settings; not the time
budget, checkpointing cadence, evaluation batch size or re-rank chunk (nor inference.dtype: the
experiments evaluate in float32). A training run's key leaves out, as well, the settings only
evaluation reads (the test split, the decoding, no_repeat_ngram), so evaluations that differ only
there share one model; M_inference stays in it, dev selection ranks with it. Keys hash the
inference settings where they stood before the config had an inference section
(train.m_inference, train.decoding), so run folders and stored parts made before keep their keys.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

from ..config import RunConfig
from ..loaders import dataset_files, detect_format

# Train settings that never change a part's numbers: left out of every key.
IGNORED_SETTINGS = ("max_train_minutes", "checkpoint_every")
# ...and, for a training run, the settings only evaluation reads.
EVAL_ONLY_SETTINGS = ("test_split", "decoding", "no_repeat_ngram", "eval_generate")

# Settings added after keys were first stored ("section.name"): left out of a key while at their default.
SETTINGS_ADDED_LATER = {"train.targets_only": False, "model.item_standardize": False,
                        "train.special_token_lr_scale": 1.0, "train.no_repeat_ngram": 0, "train.init_from": None,
                        "train.fresh_targets_only": False, "train.redial_mentions": "pecrs",
                        "train.exclude_mentioned": False, "train.hard_negatives": 0,
                        "train.hard_negative_depth": 100, "train.hard_negatives_from_epoch": 2}

DATASET_LABELS = {"inspired": "INSPIRED", "redial": "ReDial-subset"}


def copy_config(config: RunConfig, **changes) -> RunConfig:
    """A deep copy with `section.key` changes applied, e.g. {"train.alpha": 0.0}, checked as any
    config is (RunConfig.validate: a ConfigError names a bad value)."""
    new = RunConfig.from_dict(copy.deepcopy(config.to_dict()))
    for dotted, value in changes.items():
        section, _, name = dotted.partition(".")
        target = getattr(new, section)
        if not hasattr(target, name):
            raise ValueError(f"unknown config key {dotted}")
        setattr(target, name, copy.deepcopy(value))
    return new.validate()


def dataset_key(config: RunConfig) -> str:
    name = Path(config.train.dataset).name.lower()
    for key in DATASET_LABELS:
        if key in name:
            return key
    return name or "dataset"


def dataset_label(config: RunConfig) -> str:
    """INSPIRED, ReDial-subset (only the train subset is here), ReDial (full release), or the folder name."""
    key = dataset_key(config)
    if key == "redial":
        folder = Path(config.train.dataset)
        if (folder / "train_data.jsonl").is_file() or (folder / "official" / "train_data.jsonl").is_file():
            return "ReDial"
    return DATASET_LABELS.get(key, Path(config.train.dataset).name)


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> dict:
    folder = Path(path)
    try:
        fmt = detect_format(folder)
    except ValueError:
        return {"path": path}
    h = hashlib.sha1()
    for f in sorted(dataset_files(folder, fmt), key=lambda f: str(f.relative_to(folder))):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"name": folder.name, "format": fmt, "sha1": h.hexdigest()[:16]}


def dataset_fingerprint(path: str) -> dict:
    """The dataset's name, format and a hash of the files its loader reads: the same data copied
    elsewhere (the GPU machine's .devdata/) gives the same fingerprint, other data another."""
    folder = Path(path)
    if not folder.is_dir():
        return {"path": str(path)}
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()))
    return _fingerprint(str(folder.resolve()), stamp)


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _normalized(config: RunConfig, drop: tuple[str, ...]) -> dict:
    """The config as keys hash it: the dataset as its fingerprint, the inference settings that
    decide numbers in their former train-section places, the `drop`ped train settings left out."""
    d = config.to_dict()
    inference = d.pop("inference")
    d["train"].update(m_inference=inference["m_inference"], decoding=inference["decoding"],
                      no_repeat_ngram=inference["no_repeat_ngram"], eval_generate=False,
                      exclude_mentioned=inference["exclude_mentioned"])
    d["train"]["dataset"] = dataset_fingerprint(config.train.dataset)
    for name in drop:
        d["train"].pop(name, None)
    for dotted, default in SETTINGS_ADDED_LATER.items():   # keys made before a setting existed stay valid
        section, _, name = dotted.partition(".")
        if d[section].get(name) == default:
            d[section].pop(name, None)
    return d


def train_key(config: RunConfig) -> str:
    return digest(_normalized(config, IGNORED_SETTINGS + EVAL_ONLY_SETTINGS))


# What the stored numbers of a measuring part mean: raised when a change adds or redefines what an
# evaluation reports, so that stored evaluations and baselines are measured again (training runs,
# hours of work that the change does not touch, keep their keys). 2: ROUGE also as the paper's
# code scored it, and the constant reply.
METRICS_VERSION = 2


def part_key(part) -> str:
    """The key of a `parts.Part` (its kind, training run, config and own settings; for a part
    that measures, `METRICS_VERSION`)."""
    cfg = _normalized(part.config, IGNORED_SETTINGS) if part.config is not None else None
    fields = {"kind": part.kind, "train": part.train_key, "config": cfg, "spec": part.spec}
    if part.kind != "train":
        fields["metrics"] = METRICS_VERSION
    return digest(fields)
