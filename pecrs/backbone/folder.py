"""Where backbones live on disk: Hugging Face model folders and the conversion cache."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch



class BackboneNotAvailable(FileNotFoundError):
    """The requested backbone's weights are not on this machine (nothing is ever downloaded)."""


def cache_dir() -> Path:
    """Where converted backbones are kept: PECRS_CACHE, else ~/.cache/pecrs."""
    return Path(os.environ.get("PECRS_CACHE") or Path.home() / ".cache" / "pecrs")


def _load_folder(folder: Path, dtype: torch.dtype, attn_implementation: str | None):
    """A local Hugging Face checkpoint (config.json + weights + tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise BackboneNotAvailable(f"{folder} has no config.json: not a Hugging Face model folder.")
    kwargs = {_dtype_kwarg_name(): dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def _dtype_kwarg_name() -> str:
    """transformers 4.56 renamed `torch_dtype=` to `dtype=`; the project allows both sides."""
    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    return "dtype" if "dtype" in params or _transformers_major() >= 5 else "torch_dtype"


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])
