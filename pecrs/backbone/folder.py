"""Where backbones live on disk: Hugging Face model folders and the conversion cache."""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
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
    try:
        with _no_progress_bars():   # a second's load: its bar would be noise on every start
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as e:   # no weights, no tokenizer files: transformers says which
        raise BackboneNotAvailable(f"{folder}: not a loadable Hugging Face model folder: {e}") from None
    return model, tokenizer


@contextmanager
def _no_progress_bars():
    """transformers' progress bars off for the block, as they were after it."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _dtype_kwarg_name() -> str:
    """transformers 4.56 renamed `torch_dtype=` to `dtype=`; the project allows both sides."""
    from transformers import PreTrainedModel

    params = inspect.signature(PreTrainedModel.from_pretrained).parameters
    return "dtype" if "dtype" in params or _transformers_major() >= 5 else "torch_dtype"


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])
