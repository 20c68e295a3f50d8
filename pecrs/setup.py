"""What every recipe starts from: a model, a dataset's catalog and samples, and the encoders.

    setup = prepare(RunConfig.load("inspired"))    # model, bundle, store, encoder, samples

`pecrs train`, `pecrs evaluate`, the experiments and the standardized protocol all enter here,
so the catalog a model is evaluated on is built exactly as the one it trained on; `Recommender`
(serving) builds its catalog from its own items with the same `ItemStore` and `dialogue_encoder`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .catalog import ItemStore
from .config import RunConfig
from .data import DatasetBundle, Sample
from .loaders import load_dataset
from .model import PECRS
from .pretrained import build_model
from .samples import make_samples
from .tokens import DialogueEncoder


@dataclass
class Setup:
    """Everything a recipe needs: model, catalog, encoder and samples of each split."""
    config: RunConfig
    model: PECRS
    bundle: DatasetBundle
    store: ItemStore
    encoder: DialogueEncoder
    samples: dict[str, list[Sample]]


def say(message: str, enabled: bool = True) -> None:
    """A status line on stderr before a long step (stdout keeps the JSON records)."""
    if enabled:
        print(f"pecrs: {message}", file=sys.stderr, flush=True)


def prepare(config: RunConfig, model: PECRS | None = None, dataset: str | None = None,
            device: str | torch.device | None = None, progress: bool = False) -> Setup:
    """Data, catalog and model of a run. `device`: where the model goes *before* the catalog's
    item states are computed (encoding a catalog on a CPU when a GPU is there wastes minutes).
    `progress`: status lines and a bar over the catalog encoding (stderr)."""
    m, t = config.model, config.train
    if model is None:
        say(f"loading backbone {m.backbone}", progress)
        model = build_model(config, seed=t.seed)
    if device is not None:
        model.to(device)
    say(f"loading dataset {dataset or t.dataset}", progress)
    bundle = load_dataset(dataset or t.dataset)
    store = ItemStore(list(bundle.items.values()), model.tokenizer, m.item_fields, m.item_max_tokens)
    if m.item_encoding == "cached":
        say(f"encoding {len(store):,} items with the frozen base LM (once)", progress)
        store.cache_base_states(model, progress=progress)
    elif m.item_encoding != "adapted":
        raise ValueError(f"model.item_encoding must be 'cached' or 'adapted', not '{m.item_encoding}'")
    encoder = dialogue_encoder(model, config, store.index)
    samples = {name: make_samples(dialogues) for name, dialogues in bundle.splits.items()}
    if t.max_train_samples and t.train_split in samples:
        samples[t.train_split] = samples[t.train_split][: t.max_train_samples]
    if t.max_eval_samples:
        for name in (t.dev_split, t.test_split):
            if name in samples:
                samples[name] = samples[name][: t.max_eval_samples]
    return Setup(config, model, bundle, store, encoder, samples)


def dialogue_encoder(model: PECRS, config: RunConfig, item_index: dict[str, int],
                     memoize: bool = True) -> DialogueEncoder:
    """The dialogue layout of §3.2 for `model`'s tokenizer and a catalog's row index (train,
    evaluation and serving lay dialogues out with this one call; serving memoises no text)."""
    m = config.model
    return DialogueEncoder(model.tokenizer, item_index, m.context_max_tokens, m.response_max_tokens, memoize)
