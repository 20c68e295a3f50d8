"""Which floating-point type the LM runs in: float32, or bfloat16 where the hardware has it.

bfloat16 pays only where the machine multiplies it natively: on a CPU, Intel AMX (`amx_bf16`) or
AVX512-BF16 (`avx512_bf16`: Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later); on a
GPU, where `torch.cuda.is_bf16_supported()`. Elsewhere (AVX2, AVX-512 without BF16) torch emulates
it and a bfloat16 matmul is 3-8x *slower* than float32 (docs/performance.md), so "auto" keeps
float32 there.

    from pecrs.precision import resolve_dtype, to_inference_dtype
    choice = resolve_dtype("auto", "cpu")     # Precision(dtype, reason); the choice is logged once
    to_inference_dtype(model, choice.dtype)   # what Recommender.from_pretrained(dtype=...) does

What bfloat16 inference changes (`to_inference_dtype`, mixed precision):
- the frozen weights of the decoder's linear layers (the matrix work: ~96 M of SmolLM2's 135 M
  parameters) are stored in bfloat16, and the decoder runs under bfloat16 autocast, so every
  projection is a bfloat16 x bfloat16 matmul with float32 accumulation;
- the residual stream, norms and attention softmax stay float32 (autocast leaves them), as do the
  token embeddings and the tied LM head (not used for ranking; for generation they are read once
  per token, where a per-op cast would cost more than it saves), the LoRA matrices (kept apart
  for a single ranking pass: GPU training stores the frozen weights in bfloat16 too, so
  base(bf16) + LoRA(fp32) is what the adapter was trained against; folded into the bfloat16
  weights while replies are generated and for a whole evaluation, `PECRS.merged_lora`, where it
  makes decoding 1.45x faster per token, although many LoRA updates are smaller than half a
  bfloat16 step of their weight: ranked that way the shipped model agreed with float32 as well,
  top-1 24 of 24 test contexts, re-ranked top-50 overlap 0.988 against 0.983 kept apart), the item
  encoder and the heads f, g (they run outside the decoder, on its float32 output), the catalog
  vectors and the recall search (exact cosine in float32). The measured agreement with float32 is
  in docs/performance.md.
"""
from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHOICES = ("auto", *DTYPES)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of native bfloat16 matrix units
CPUINFO = Path("/proc/cpuinfo")

_logged: set[tuple[str, str, str]] = set()
_log_lock = threading.Lock()


# ---- what the hardware has -----------------------------------------------------------------------

def _read_cpuinfo(text: str | None) -> str:
    if text is not None:
        return text
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags: the words of the first `flags` line of /proc/cpuinfo (x86; every
    core lists the same). `cpuinfo`: the file's text (tests feed their own); None reads the file.
    Empty where there is no such file (macOS, Windows): then no bfloat16 units are assumed."""
    for line in _read_cpuinfo(cpuinfo).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    for line in _read_cpuinfo(cpuinfo).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    import platform

    return platform.processor() or "unknown CPU"


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 matrix-unit flags this CPU has (a subset of BF16_CPU_FLAGS, in that order)."""
    flags = cpu_flags(cpuinfo)
    return [f for f in BF16_CPU_FLAGS if f in flags]


# ---- the choice ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_dtype(requested="auto", device=None, *, cpuinfo: str | None = None) -> Precision:
    """"auto" | "float32" | "bfloat16" (or a torch dtype) -> Precision(dtype, reason) for `device`
    (a torch.device or name; None: cuda when available, else cpu). "auto" is bfloat16 on a GPU that
    supports it and on a CPU with bfloat16 units (`cpu_bf16_units`), float32 elsewhere. A forced
    "bfloat16" is honoured everywhere (slow where the hardware emulates it, and the reason says
    so). The choice and its reason are logged once per process (per distinct choice)."""
    from .backbone import default_device

    if isinstance(requested, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if requested not in names:
            raise ValueError(f"dtype must be float32 or bfloat16, not {requested}")
        requested = names[requested]
    if requested not in CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(CHOICES)}, not {requested!r}")
    device = default_device(device)
    if device.type == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        where = f"GPU {torch.cuda.get_device_name(device) if torch.cuda.is_available() else '?'}"
        units = "supports bfloat16" if native else "has no native bfloat16 support"
    elif device.type == "cpu":
        found = cpu_bf16_units(cpuinfo)
        native = bool(found)
        where = f"CPU {cpu_model(cpuinfo)}"
        units = (f"has bfloat16 matrix units ({', '.join(found)})" if found else
                 f"has no bfloat16 matrix units ({' / '.join(BF16_CPU_FLAGS)} absent from /proc/cpuinfo)")
    else:
        native, where, units = False, f"device {device}", "is not one pecrs knows bfloat16 support for"
    if requested == "auto":
        dtype = torch.bfloat16 if native else torch.float32
        reason = f"auto: {where} {units}"
    else:
        dtype = DTYPES[requested]
        reason = f"requested {requested}"
        if dtype == torch.bfloat16 and not native:
            reason += f"; {where} {units}, so bfloat16 is emulated and slower than float32"
    choice = Precision(dtype, reason)
    _log_once(choice, device)
    return choice


def _log_once(choice: Precision, device: torch.device) -> None:
    key = (device.type, choice.name, choice.reason)
    with _log_lock:
        if key in _logged:
            return
        _logged.add(key)
    log.info("precision: %s on %s (%s)", choice.name, device.type, choice.reason)


# ---- applying it to a model ----------------------------------------------------------------------

def _linear_layers(decoder):
    """The frozen matrix layers of a decoder: nn.Linear and GPT-2's Conv1D, LoRA's own matrices
    and anything trainable excluded."""
    from transformers.pytorch_utils import Conv1D

    for name, module in decoder.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and "lora_" not in name \
                and not module.weight.requires_grad:
            yield module


def inference_dtype(model) -> torch.dtype:
    """The dtype `to_inference_dtype` gave `model` (float32 when it was never called)."""
    return getattr(model, "_pecrs_inference_dtype", torch.float32)


def to_inference_dtype(model, dtype: torch.dtype, merge_lora: bool = False) -> int:
    """Prepare a PECRS model (in eval mode) for inference in `dtype`, in place; returns how many
    weight tensors were cast. float32 changes nothing. bfloat16: the decoder's frozen linear
    weights are stored in bfloat16 and its forward runs under bfloat16 autocast (see the module
    docstring for what stays float32). merge_lora=True first folds LoRA into the float32 weights
    (W + BA, then one rounding) and keeps it folded: for measurements (benchmarks/bf16_agreement.py);
    a merged model must not run the base LM (`disable_adapter`, the "cached" item encoding), which
    would unfold it in bfloat16. Not for training: `pecrs.step.cast_frozen` does that."""
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype}")
    current = inference_dtype(model)
    if dtype == current:
        return 0
    if current != torch.float32 or dtype == torch.float32:
        raise ValueError(f"this model already runs in {current}; load it again for {dtype}")
    if model.training:
        raise ValueError("to_inference_dtype is for a model in eval mode (training casts with pecrs.step.cast_frozen)")
    if merge_lora:
        model.lm.merge_adapter()
    decoder = model.decoder
    n = 0
    for layer in _linear_layers(decoder):
        for p in (layer.weight, layer.bias):
            if p is not None and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += 1
    _run_under_autocast(decoder, dtype)
    model._pecrs_inference_dtype = dtype
    return n


def _run_under_autocast(module, dtype: torch.dtype) -> None:
    """Make `module` (the decoder) run its forward under `dtype` autocast on whatever device its
    weights are. Its float32 inputs and outputs are unchanged, so callers (PECRS.context_pass,
    rerank_with_cache, the item encoder, generation through the causal LM) need nothing new."""
    inner = module.forward
    reference = next(module.parameters())

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type=reference.device.type, dtype=dtype):
            return inner(*args, **kwargs)

    module.forward = forward
