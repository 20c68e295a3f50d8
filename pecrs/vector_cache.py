"""A catalog's item vectors (Eq. 1) without encoding it again.

Encoding a catalog runs every item's text through the LM: minutes on a CPU for thousands of items.
The vectors are therefore kept in two places, both checked against what they encode:
  * beside a checkpoint (`VECTORS_FILE`, safetensors, written by `Recommender.save_pretrained`
    with the catalog copy; the shipped models load with nothing to encode), with the hash of the
    catalog copy's items as the checkpoint's config makes them text (`items_sha256`), so that a
    catalog copy edited since (same ids, another plot) is encoded again; files written before
    that hash existed carry the ids' hash only, and are checked against the ids as before;
  * in a disk cache, PECRS_CACHE (default ~/.cache/pecrs)/catalogs/<key>.pt, the key hashing the
    checkpoint files, the catalog contents, the item-text settings, the encoding precision and the
    base weights (backbone/fingerprint.py), so a second start on the same (checkpoint, catalog)
    loads instead of encoding.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import fields
from pathlib import Path

import torch

from .catalog_source import CATALOG_FILE
from .data import Item

log = logging.getLogger(__name__)

VECTORS_FILE = "item_vectors.safetensors"  # a saved catalog's item vectors, beside the checkpoint
CACHE_FORMAT = 2                 # bump when the cached payload or the encoding changes


def _hash_files(folder: Path) -> str:
    """Content hash of a checkpoint: every file but trainer state, READMEs and the catalog copy."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == CATALOG_FILE or path.suffix == ".pt" or path.name == "README.md":
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


_ITEM_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def _hash_items(items) -> str:
    """Every field of every item, in order. A shallow dict, not `asdict` (whose deep copy adds
    nothing to str, int and tuple fields): 5x faster, 0.7 s for 100k items; the same digest."""
    h = hashlib.sha256()
    names = [f.name for f in fields(Item)]
    for it in items:
        h.update(_ITEM_JSON.encode({name: getattr(it, name) for name in names}).encode() + b"\n")
    return h.hexdigest()


def _encoding_key(items, model_config) -> dict:
    """What a catalog's vectors encode, but for the weights: every item (ids, order, all fields)
    and the settings that make an item its text and pool it."""
    return {"catalog": _hash_items(items), "fields": list(model_config.item_fields),
            "max_tokens": model_config.item_max_tokens, "encoding": model_config.item_encoding}


def items_sha256(items, model_config) -> str:
    """The hash of what a saved vectors file encodes (`_encoding_key`, as the disk cache keys it)."""
    return hashlib.sha256(json.dumps(_encoding_key(items, model_config), sort_keys=True).encode()).hexdigest()


def catalog_cache_key(checkpoint: Path, items, model_config, dtype: torch.dtype = torch.float32,
                      backbone: str | None = None) -> str:
    """The cache file name of a catalog's vectors; `dtype`, the precision of the LM that encodes
    them, is part of the key except for float32 (so caches written before it existed stay valid),
    and so is `backbone`, the fingerprint of the base weights that encode them (the checkpoint's
    files do not say which base `--backbone` put under them)."""
    key = {"format": CACHE_FORMAT, "checkpoint": _hash_files(checkpoint), **_encoding_key(items, model_config)}
    if backbone:
        key["backbone"] = backbone
    if dtype != torch.float32:
        key["dtype"] = str(dtype).removeprefix("torch.")
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    from .backbone import cache_dir

    return cache_dir() / "catalogs"


def _hash_ids(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def load_saved_vectors(checkpoint: Path, items, model_config, width: int) -> torch.Tensor | None:
    """The item vectors [len(items), width] saved beside a checkpoint's catalog, if they encode
    `items` (Items in row order, the catalog served) under `model_config`'s item settings: the ids'
    hash, and in files that record it `items_sha256` (older files, the shipped model's, carry the
    ids' hash only). Vectors are derived data: a damaged file, one of another catalog or shape, or
    one holding NaN or infinite values is re-encoded (with a warning naming it) rather than refused."""
    from safetensors import SafetensorError, safe_open

    path = checkpoint / VECTORS_FILE
    if not path.is_file():
        return None
    items = list(items)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("ids_sha256") != _hash_ids([it.id for it in items]):
                log.warning("%s does not match the catalog %s: re-encoding", path, checkpoint / CATALOG_FILE)
                return None
            if "items_sha256" in meta and meta["items_sha256"] != items_sha256(items, model_config):
                log.warning("%s was encoded from other item texts or item settings than the catalog %s and "
                            "%s now hold (edited since it was saved?): re-encoding",
                            path, checkpoint / CATALOG_FILE, checkpoint / "pecrs_config.json")
                return None
            vectors = f.get_tensor("vectors").float()
    except (SafetensorError, OSError) as e:
        log.warning("%s cannot be read (%s): re-encoding the catalog", path, str(e).splitlines()[0])
        return None
    if tuple(vectors.shape) != (len(items), width):
        log.warning("%s holds vectors of shape %s, not [%d, %d] for this model and catalog: re-encoding",
                    path, list(vectors.shape), len(items), width)
        return None
    if not torch.isfinite(vectors).all():
        log.warning("%s holds NaN or infinite vectors: re-encoding", path)
        return None
    return vectors


def load_cached(path: Path, ids: list[str]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: re-encode and overwrite it
        log.warning("ignoring unreadable catalog cache %s: %s", path, e)
        return None
    if not isinstance(payload, dict) or payload.get("ids") != ids or not torch.is_tensor(payload.get("vectors")):
        return None   # a foreign file under the hashed name: re-encode and overwrite it
    return payload["vectors"]


def save_cached(path: Path, ids: list[str], vectors: torch.Tensor) -> bool:
    """Write the cache file; the cache only saves time, so a folder that cannot be written (read-only
    home, PECRS_CACHE naming a file) is a warning, and the vectors just encoded are used anyway.
    Returns whether the file was written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": CACHE_FORMAT, "ids": ids, "vectors": vectors.detach().float().cpu()}, tmp)
        os.replace(tmp, tmp.with_name(path.name))
        return True
    except (OSError, RuntimeError) as e:   # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        log.warning("cannot write the catalog cache %s (%s): the catalog will be encoded again next time "
                    "(set PECRS_CACHE to a writable folder)", path, e)
        return False


def save_vectors(vectors: torch.Tensor, items, model_config, path: Path, half: bool = False) -> None:
    """`vectors` [N, d] of the catalog `items` (Items, in row order) as safetensors at `path`
    (float16 when `half`), with what `load_saved_vectors` checks: the hash of the ids (all that
    older pecrs versions check) and `items_sha256` of the items and `model_config`'s item settings."""
    from safetensors.torch import save_file

    items = list(items)
    vectors = vectors.detach().cpu().to(torch.float16 if half else torch.float32).contiguous()
    save_file({"vectors": vectors}, path, metadata={"ids_sha256": _hash_ids([it.id for it in items]),
                                                    "items_sha256": items_sha256(items, model_config),
                                                    "count": str(len(items))})


def find_cached(folder: Path, checkpoint: Path, items: dict, model_config, dtype: torch.dtype,
                backbone: str | None = None) -> tuple[torch.Tensor | None, Path]:
    """(vectors or None, cache path) for a catalog in the disk cache `folder`. Vectors encoded in
    float32 serve every precision, bfloat16-encoded ones only bfloat16; the path returned is where
    they were found, else where this precision's encoding is to be saved."""
    for key_dtype in dict.fromkeys([torch.float32, dtype]):
        path = folder / f"{catalog_cache_key(checkpoint, items.values(), model_config, key_dtype, backbone)}.pt"
        vectors = load_cached(path, list(items))
        if vectors is not None:
            return vectors, path
    return None, path
