"""The model and setups that stay in memory between evaluation parts, so consecutive parts on
the same checkpoint load it once; and freeing memory between parts."""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

from ..config import RunConfig

_MODEL_CACHE: dict = {}
_SETUP_CACHE: dict = {}


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def eval_setup(ckpt: Path, config: RunConfig):
    """`pecrs.prepare.Setup` for evaluating `ckpt` with `config` (item fields, dataset, eval slice),
    the model on the GPU when there is one. The model and the last two setups stay cached in the
    process, so consecutive parts on the same checkpoint load it once."""
    from ..backbone import default_device
    from ..pretrained import load_pretrained
    from ..prepare import prepare

    stamp = (ckpt / "heads.safetensors").stat().st_mtime if (ckpt / "heads.safetensors").exists() else 0
    mkey = (str(ckpt.resolve()), stamp, config.model.backbone)
    if mkey not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _SETUP_CACHE.clear()
        free_memory()
        model, _ = load_pretrained(ckpt, backbone=config.model.backbone)
        _MODEL_CACHE[mkey] = model.to(default_device()).eval()
    model = _MODEL_CACHE[mkey]
    skey = (mkey, json.dumps(config.to_dict(), sort_keys=True))
    if skey not in _SETUP_CACHE:
        while len(_SETUP_CACHE) >= 2:
            _SETUP_CACHE.pop(next(iter(_SETUP_CACHE)))
        # Status lines and the catalog-encoding bar on a terminal (minutes on a CPU).
        _SETUP_CACHE[skey] = prepare(config, model=model, progress=sys.stderr.isatty())
    return _SETUP_CACHE[skey]


def clear_caches() -> None:
    _MODEL_CACHE.clear()
    _SETUP_CACHE.clear()
    free_memory()
