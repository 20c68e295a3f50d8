"""What every recipe starts from: a model, a dataset's catalog and samples, and the encoders.

    setup = prepare(RunConfig.load("inspired"))    # model, bundle, store, encoder, samples

`pecrs train`, `pecrs evaluate`, the experiments and the standardized protocol all enter here,
so the catalog a model is evaluated on is built exactly as the one it trained on; `Recommender`
(serving) builds its catalog from its own items with the same `ItemStore` and `dialogue_encoder`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .catalog import ItemStore
from .catalog_source import CATALOG_FILE
from .config import RunConfig
from .data import DataError, DatasetBundle, Item, Sample
from .loaders import load_dataset, load_items
from .model import PECRS
from .pretrained import build_model, other_backbone, read_meta
from .samples import make_samples
from .tokens import DialogueEncoder
from .vector_cache import load_saved_vectors


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
            device: str | torch.device | None = None, progress: bool = False,
            saved_vectors_from: Path | None = None) -> Setup:
    """Data, catalog and model of a run. `device`: where the model goes *before* the catalog's
    item states are computed (encoding a catalog on a CPU when a GPU is there wastes minutes).
    `progress`: status lines and a bar over the catalog encoding (stderr). `saved_vectors_from`
    (inference only): a checkpoint whose saved item vectors are used when they are this
    catalog's (a shipped model), so nothing is encoded and evaluation scores what serving serves."""
    m, t = config.model, config.train
    # The data first: a wrong path fails before the backbone's load (or first conversion) runs.
    if dataset is None and not Path(t.dataset).exists():
        raise DataError(f"dataset folder not found (train.dataset, read from the working directory {Path.cwd()}); "
                        "give it with train.dataset=DIR", path=t.dataset)
    say(f"loading dataset {dataset or t.dataset}", progress)
    bundle = load_dataset(dataset or t.dataset, mentions=t.redial_mentions)
    for kind, counts in (("skipped", bundle.skipped), ("repaired", bundle.repaired)):
        for what, n in sorted(counts.items()):   # documented departures (docs/data-format.md)
            say(f"{bundle.name}: {kind} {what}: {n:,} (pecrs data stats)", progress)
    if model is None:
        say(f"loading backbone {m.backbone}", progress)
        model = build_model(config, seed=t.seed)
    if device is not None:
        model.to(device)
    store = ItemStore(list(bundle.items.values()), model.tokenizer, m.item_fields, m.item_max_tokens, m.item_encoding)
    saved = saved_catalog_vectors(Path(saved_vectors_from), store.items, model) if saved_vectors_from else None
    if saved is not None:
        say(f"{len(store):,} item vectors from {saved_vectors_from}", progress)
        store.use_saved_vectors(saved.to(model.device))
    elif m.item_encoding == "cached":
        say(f"encoding {len(store):,} items with the frozen base LM (once)", progress)
        store.cache_base_states(model, progress=progress)
    encoder = dialogue_encoder(model, config, store.index)
    samples = {name: make_samples(dialogues) for name, dialogues in bundle.splits.items()}
    if t.targets_only and t.train_split in samples:
        # Recall, re-ranking and the [ITEM] reply are learned from these rows only (28% of
        # INSPIRED's training samples): a short run spends all its steps on them.
        samples[t.train_split] = [s for s in samples[t.train_split] if s.target is not None]
    if t.fresh_targets_only and t.train_split in samples:
        samples[t.train_split] = [s for s in samples[t.train_split] if not s.target_seen_before]
    if t.max_train_samples and t.train_split in samples:
        samples[t.train_split] = samples[t.train_split][: t.max_train_samples]
    if t.max_eval_samples:
        for name in (t.dev_split, t.test_split):
            if name in samples:
                samples[name] = samples[name][: t.max_eval_samples]
    return Setup(config, model, bundle, store, encoder, samples)


def saved_catalog_vectors(checkpoint: Path, items: list[Item], model: PECRS, meta: dict | None = None,
                          read_from_checkpoint: bool = False) -> torch.Tensor | None:
    """The item vectors saved with `checkpoint` when its saved catalog is exactly `items` (same
    ids, texts and order: a catalog edited since, or another one, is encoded instead) and `model`
    has the base weights that encoded them: the one rule of evaluation (`prepare`) and serving
    (`Recommender.from_pretrained`). `read_from_checkpoint`: `items` are that saved catalog, read
    just now (nothing to compare)."""
    saved_catalog = checkpoint / CATALOG_FILE
    if not read_from_checkpoint and (not saved_catalog.is_file() or _read_or_none(saved_catalog) != list(items)):
        return None
    if other_backbone(model, meta or read_meta(checkpoint)):
        return None
    return load_saved_vectors(checkpoint, items, model.config, model.hidden_size)


def _read_or_none(catalog: Path) -> list[Item] | None:
    """A saved catalog's items, or None when a bad line makes it unreadable (then its vectors are
    not used: another catalog was given, which is encoded)."""
    try:
        return list(load_items(catalog).values())
    except DataError:
        return None


def dialogue_encoder(model: PECRS, config: RunConfig, item_index: dict[str, int],
                     memoize: bool = True) -> DialogueEncoder:
    """The dialogue layout of §3.2 for `model`'s tokenizer and a catalog's row index (train,
    evaluation and serving lay dialogues out with this one call; serving memoises no text)."""
    m = config.model
    return DialogueEncoder(model.tokenizer, item_index, m.context_max_tokens, m.response_max_tokens, memoize)
