"""Loading a backbone by name or folder: (model, tokenizer), nothing downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

from .folder import BackboneNotAvailable, _load_folder
from .gguf import _load_gguf_cached, gemma3_gguf_path, smollm2_gguf_path
from .tiny import _build_tiny


DEFAULT_BACKBONE = "smollm2-135m-instruct"
TINY_BACKBONES = ("tiny-gpt2", "tiny-llama")
GGUF_BACKBONES = ("smollm2-135m-instruct", "gemma-3-270m")
KNOWN_BACKBONES = GGUF_BACKBONES + TINY_BACKBONES


def default_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested` (checked: `check_device`), else the GPU when there is one, else the CPU."""
    return check_device(requested) if requested else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(requested: str | torch.device) -> torch.device:
    """A torch device this machine has ("cpu", "cuda", "cuda:1", ...), or a ValueError saying what
    it has, before a model loads rather than from inside torch after (`--device` too)."""
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device: expected one such as cpu, cuda or cuda:1, got '{requested}'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device '{requested}': this machine has no CUDA GPU torch can use")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device '{requested}': this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device '{requested}': this machine has no Apple GPU torch can use")
    return device  # other kinds (xpu, plugin backends) are torch's to check


def load_backbone(
    name_or_path: str = DEFAULT_BACKBONE,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
):
    """Return `(model, tokenizer)` for a backbone name, a model folder or a `.gguf` file.

    `attn_implementation` ("eager", "sdpa", ...) is passed to transformers; None keeps its default
    (sdpa where available). The tokenizer always has a pad token (eos when it had none).
    """
    if name_or_path in TINY_BACKBONES:
        model, tokenizer = _build_tiny(name_or_path, dtype, attn_implementation)
    elif name_or_path in GGUF_BACKBONES:
        gguf = smollm2_gguf_path() if name_or_path == "smollm2-135m-instruct" else gemma3_gguf_path()
        model, tokenizer = _load_gguf_cached(gguf, dtype, attn_implementation)
    elif Path(name_or_path).is_file() and name_or_path.endswith(".gguf"):
        model, tokenizer = _load_gguf_cached(Path(name_or_path), dtype, attn_implementation)
    elif Path(name_or_path).is_dir():
        model, tokenizer = _load_folder(Path(name_or_path), dtype, attn_implementation)
    else:
        raise BackboneNotAvailable(
            f"Unknown backbone {name_or_path!r}: expected one of {', '.join(KNOWN_BACKBONES)}, "
            "a folder holding a Hugging Face causal LM, or a .gguf file."
        )
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def ensure_pad_token(model, tokenizer) -> None:
    """Batching needs a pad id; decoder-only LMs often ship without one, so reuse eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
