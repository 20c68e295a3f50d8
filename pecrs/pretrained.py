"""Build a PECRS model, save it, load it back (the `save_pretrained` / `from_pretrained` pair).

A checkpoint folder holds only what trains, plus what is needed to rebuild the rest:

    pecrs_config.json        the run config (backbone name, LoRA and head settings, data, ...) and
                             the fingerprint of the base weights (backbone/fingerprint.py)
    adapter/                 LoRA weights and special-token embeddings, in peft's format
    heads.safetensors        item encoder (pooling weights w, h_item), f and g
    tokenizer/               the tokenizer with the four special tokens

The frozen backbone is not copied: it is rebuilt from `model.backbone` (a known name or a
local folder) and checked against the shapes recorded here; other weights of the same shapes
are named in a warning (`warn_if_other_backbone`).

Saving is atomic: the folder is written as NAME.tmp (pecrs_config.json last, so a NAME.tmp that
has it is complete), then NAME is renamed to NAME.old, NAME.tmp to NAME, and NAME.old removed.
A crash between the two renames leaves NAME.old and NAME.tmp but no NAME: `recover_checkpoint`
puts the newest complete one back.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import add_special_tokens, apply_lora, backbone_fingerprint, ensure_pad_token, load_backbone, \
    set_token_roles
from .config import RunConfig
from .model import PECRS

CONFIG_FILE, HEADS_FILE, ADAPTER_DIR = "pecrs_config.json", "heads.safetensors", "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"   # peft's file name inside ADAPTER_DIR
MODELS_DIR = Path(__file__).parent / "models"   # models shipped inside the package, one folder each
DEFAULT_MODEL = "inspired"                      # what `pecrs chat` / `serve` load without a run folder
FILES_KEY = "extra_files"   # in pecrs_config.json: the torch.save files the folder must hold
FINGERPRINT_KEY = "backbone_fingerprint"   # in pecrs_config.json: the base weights it trained on

log = logging.getLogger(__name__)


def build_model(config: RunConfig, seed: int | None = None) -> PECRS:
    """A fresh PECRS model: backbone, special tokens, LoRA, freshly initialised heads."""
    if seed is not None:
        torch.manual_seed(seed)
    lm, tokenizer = load_backbone(config.model.backbone)
    return from_backbone(lm, tokenizer, config)


def from_backbone(lm, tokenizer, config: RunConfig) -> PECRS:
    """A fresh PECRS model around a causal LM already in memory (one you built or loaded
    yourself): pad token, the four special tokens, LoRA as `config.model` sets it, new heads.
    Checkpoints of it rebuild the backbone from `config.model.backbone`, so name a folder there."""
    m = config.model
    fingerprint = backbone_fingerprint(lm)   # of the plain LM, before anything is added
    ensure_pad_token(lm, tokenizer)
    special_ids = add_special_tokens(lm, tokenizer)
    lm = apply_lora(lm, list(special_ids.values()), r=m.lora_r, alpha=m.lora_alpha,
                    dropout=m.lora_dropout, target_modules=m.lora_target_modules)
    model = PECRS(lm, tokenizer, m)
    model.backbone_fingerprint = fingerprint
    return model


def head_state(model: PECRS) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if not k.startswith("lm.")}


def save_pretrained(model: PECRS, config: RunConfig, directory: str | Path, extra: dict | None = None,
                    extra_files: dict[str, object] | None = None, write_more=None) -> Path:
    """Write the checkpoint atomically: into a temporary sibling folder, then renamed over.
    extra_files: name -> object saved with torch.save in the same folder (trainer state); they
    must load with torch.load(weights_only=True). pecrs_config.json is written last, listing them,
    so that `checkpoint_complete` can tell a finished temporary folder from a half-written one.
    write_more(folder) adds files to the temporary folder (a recommender's catalog and vectors)."""
    directory = Path(directory)
    check_replaceable(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Only the special-token deltas: the resized base rows are rebuilt deterministically, and
    # saving whole embedding matrices would put ~230 MB of frozen weights in every checkpoint.
    model.lm.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
    save_file(head_state(model), tmp / HEADS_FILE)
    model.tokenizer.save_pretrained(tmp / "tokenizer")
    causal = model.causal_lm.config
    for name, obj in (extra_files or {}).items():
        torch.save(obj, tmp / name)
    if write_more is not None:
        write_more(tmp)
    meta = {"config": config.to_dict(), "hidden_size": model.hidden_size,
            "vocab_size": len(model.tokenizer), "model_type": causal.model_type,
            FINGERPRINT_KEY: model.backbone_fingerprint, FILES_KEY: sorted(extra_files or {}), **(extra or {})}
    (tmp / (CONFIG_FILE + ".part")).write_text(json.dumps(meta, indent=2))
    os.replace(tmp / (CONFIG_FILE + ".part"), tmp / CONFIG_FILE)
    _replace_dir(tmp, directory)
    return directory


def check_replaceable(directory: Path, sources: tuple[Path, ...] = ()) -> None:
    """Saving replaces `directory` whole, so it must be new, empty or a pecrs checkpoint: a
    FileExistsError names it otherwise (a run folder, its parent, a file), and a ValueError when it
    is one of `sources` (the checkpoint being saved, its run folder) or a folder holding one
    (`pecrs export RUN RUN`)."""
    dest = directory.resolve()
    # Saving also deletes DEST.tmp and DEST.old (the atomic replace): none may be a source either.
    replaced = (dest, dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".old"))
    for source in sources:
        src = Path(source).resolve()
        if any(r == src or r in src.parents for r in replaced):
            raise ValueError(f"{directory}: would replace {source}, which is being saved from; choose another folder")
    if directory.is_symlink():
        raise FileExistsError(f"{directory} is a symbolic link; saving replaces a folder, give the folder itself")
    if directory.is_file():
        raise FileExistsError(f"{directory} is a file; saving a model needs a folder it can replace")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file():
        raise FileExistsError(f"{directory} exists and is not a pecrs checkpoint (no {CONFIG_FILE}); saving would "
                              f"replace everything in it: remove it or choose another folder")


def check_save_destination(directory: Path, catalog_file: str, sources: tuple[Path, ...] = ()) -> None:
    """Where a trained model may be saved with its catalog (`Recommender.save_pretrained`, `pecrs
    export`): `check_replaceable`, and never over a checkpoint that training wrote (RUN/best, RUN/last),
    which has no `catalog_file` (catalog_source.CATALOG_FILE): a ValueError names the folder."""
    check_replaceable(directory, sources)
    if (directory / CONFIG_FILE).is_file() and not (directory / catalog_file).is_file():
        raise ValueError(f"{directory} is a training checkpoint ({CONFIG_FILE} without the {catalog_file} of a saved "
                         f"recommender or an export), not an earlier save: saving would replace it and any trainer "
                         f"state it keeps; choose another folder")


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    # (a crash here leaves NAME.old and NAME.tmp, both complete: see recover_checkpoint)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_complete(directory: str | Path) -> bool:
    """Whether `directory` holds a whole checkpoint: pecrs_config.json (written last) readable,
    the weights and tokenizer present, and every extra file it lists."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    extra = meta.get(FILES_KEY, []) if isinstance(meta, dict) else None
    if not isinstance(extra, list) or not all(isinstance(name, str) for name in extra):
        return False
    return all((directory / name).exists() for name in (HEADS_FILE, ADAPTER_DIR, "tokenizer", *extra))


def recover_checkpoint(directory: str | Path) -> Path | None:
    """Make `directory` (a checkpoint folder written by `save_pretrained`, e.g. RUN/last) whole
    again after a crash, before anything decides whether to resume from it; returns it, or None
    if there is no complete checkpoint under that name. An existing `directory` is complete (only
    finished folders are renamed to it); else NAME.tmp (the newer) if complete, else NAME.old,
    becomes it and the other leftover goes; a half-written NAME.tmp is left for the next save."""
    directory = Path(directory)
    if directory.exists():
        return directory
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    for source, other in ((tmp, old), (old, tmp)):
        if checkpoint_complete(source):
            os.replace(source, directory)
            shutil.rmtree(other, ignore_errors=True)
            return directory
    return None


def shipped_models() -> dict[str, Path]:
    """{name: folder} of the trained models that ship with the package (pecrs/models/NAME)."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(MODELS_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def checkpoint_dir(name_or_path: str | Path) -> Path:
    """The checkpoint folder meant by a run folder (its best/), a checkpoint folder, or the name
    of a shipped model ("inspired"). A run folder whose best/ was caught between the two renames
    of a save is recovered first."""
    path = Path(name_or_path)
    shipped = shipped_models()
    if path.is_dir():
        recover_checkpoint(path / "best")
        if (path / "best" / CONFIG_FILE).is_file():
            return path / "best"
        if (path / CONFIG_FILE).is_file():
            return path
        if str(name_or_path) not in shipped:  # a stray ./inspired folder does not hide the shipped model
            raise FileNotFoundError(f"{path} is neither a run folder with best/ nor a pecrs checkpoint")
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    if str(name_or_path) == DEFAULT_MODEL:
        raise FileNotFoundError(
            f"no trained '{DEFAULT_MODEL}' model ships with this version of pecrs yet (it is trained on a "
            f"GPU, docs/gpu.md); train one with `pecrs train configs/inspired.yaml --output-dir runs/inspired` "
            f"and pass runs/inspired")
    known = f"; shipped models: {', '.join(shipped)}" if shipped else ""
    raise FileNotFoundError(f"{path}: no such run folder, checkpoint folder or shipped model{known}")


def results_dir(checkpoint: Path) -> Path:
    """The folder that holds a checkpoint's results (metrics.jsonl, eval_<split>.json): the run
    folder for a run's best/, the checkpoint folder itself otherwise (runs/x/last, a
    save_pretrained folder), so that evaluating last/ never overwrites what best/ was measured at."""
    return checkpoint.parent if checkpoint.name == "best" else checkpoint


def is_shipped(checkpoint: Path) -> bool:
    return checkpoint.resolve().parent == MODELS_DIR.resolve()


def halve_weights(directory: str | Path) -> None:
    """Store a checkpoint's adapter and head weights in float16, in place (the shipped model:
    half the bytes; they load into the float32 model as usual, `load_weights`)."""
    directory = Path(directory)
    for path in [directory / HEADS_FILE, *sorted((directory / ADAPTER_DIR).glob("*.safetensors"))]:
        tensors = load_file(path)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path)


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a pecrs checkpoint: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable pecrs config ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{path}: no 'config' object; the checkpoint is damaged")
    train = meta["config"].get("train")
    if isinstance(train, dict):   # 0 meant every sample until 2026-12-01 (null now; 0 is refused)
        train.update({k: None for k in ("max_train_samples", "max_eval_samples") if train.get(k) == 0})
    for key, kind in (("model_type", str), ("hidden_size", int), ("vocab_size", int)):
        if not isinstance(meta.get(key), kind):   # what load_pretrained checks the backbone against
            raise ValueError(f"{path}: '{key}' is missing or not a {kind.__name__}; the checkpoint is damaged")
    for key in ("recommender", "export"):
        if not isinstance(meta.get(key, {}), dict):
            raise ValueError(f"{path}: '{key}' is not an object; the checkpoint is damaged")
    if not isinstance(meta.get(FINGERPRINT_KEY), (str, type(None))):   # None: saved before it existed
        raise ValueError(f"{path}: '{FINGERPRINT_KEY}' is not a string; the checkpoint is damaged")
    return meta


def load_pretrained(directory: str | Path, backbone: str | None = None) -> tuple[PECRS, RunConfig]:
    """Rebuild the model of a checkpoint folder. `backbone` overrides where the base LM comes
    from (e.g. another local copy of the same model); its shapes must match the checkpoint."""
    directory = Path(directory)
    meta = read_meta(directory)
    config = RunConfig.from_dict(meta["config"])
    if backbone:
        config.model.backbone = backbone
    model = build_model(config)
    check_architecture(model, meta, directory)
    warn_if_other_backbone(model, meta, directory)
    adopt_token_roles(model, directory / "tokenizer")
    load_weights(model, directory)
    return model, config


def check_architecture(model: PECRS, meta: dict, where) -> None:
    """A ValueError, starting with `where`, when `model`'s backbone is not of the architecture of the
    checkpoint of `meta`: its weights cannot fit (loading them would fail with a dump of names)."""
    if model.causal_lm.config.model_type != meta["model_type"] or model.hidden_size != meta["hidden_size"] \
            or len(model.tokenizer) != meta["vocab_size"]:
        raise ValueError(
            f"{where}: checkpoint was trained on a {meta['model_type']} backbone (hidden size "
            f"{meta['hidden_size']}, vocabulary {meta['vocab_size']}) but '{model.config.backbone}' is a "
            f"{model.causal_lm.config.model_type} (hidden size {model.hidden_size}, vocabulary "
            f"{len(model.tokenizer)})")


def other_backbone(model: PECRS, meta: dict) -> bool:
    """True when `model`'s base weights are not those the checkpoint of `meta` was trained on,
    though architecture and shapes match: a base model for its instruct tuning, another
    quantization, a local folder that changed. (False when either fingerprint is unknown.)"""
    saved, ours = meta.get(FINGERPRINT_KEY), model.backbone_fingerprint
    return bool(saved and ours and saved != ours)


def warn_if_other_backbone(model: PECRS, meta: dict, directory: Path) -> None:
    """A warning, not an error: a re-quantized copy of the same model works, only less well."""
    if other_backbone(model, meta):
        log.warning("%s was trained on other base weights than those of '%s' (backbone fingerprint %s in %s, "
                    "%s here): same shapes, so it loads, but its adapter was fitted to the other weights; "
                    "expect worse rankings and replies, and its saved item vectors are not used (the catalog "
                    "is encoded again)", directory, model.config.backbone, meta[FINGERPRINT_KEY], CONFIG_FILE,
                    model.backbone_fingerprint)


def adopt_token_roles(model: PECRS, tokenizer_dir: Path) -> None:
    """Give eos, pad, bos and unk the tokens the checkpoint was trained with, over the backbone's.
    The same GGUF read by two transformers versions can name different ones (5.17 read SmolLM2's
    eos as <|im_start|>, 5.24 as <|im_end|>), and a model trained to end its replies with one
    token must be evaluated and served with that token."""
    path = tokenizer_dir / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not a JSON object; the checkpoint is damaged")
    vocab = model.tokenizer.get_vocab()
    tokens = {role: saved.get(role) for role in ("bos_token", "eos_token", "pad_token", "unk_token")}
    tokens = {role: t.get("content") if isinstance(t, dict) else t for role, t in tokens.items()}
    set_token_roles(model.tokenizer, {role: vocab[t] for role, t in tokens.items() if isinstance(t, str) and t in vocab})
    ensure_pad_token(model.causal_lm, model.tokenizer)


def load_weights(model: PECRS, directory: str | Path) -> None:
    """Put a checkpoint's adapter and head weights into an already built model. Every weight the
    model's adapter and heads hold must be in the files, in a floating dtype, and nothing else:
    a file from another model, or one with weights missing, is a ValueError naming it."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    directory = Path(directory)
    adapter_file = directory / ADAPTER_DIR / ADAPTER_WEIGHTS
    if not adapter_file.is_file():   # read here, not by peft, which would take the path for a Hub id
        raise ValueError(f"{adapter_file}: missing; {directory} is not a complete pecrs checkpoint")
    with _naming(adapter_file, "adapter"):
        adapter = load_file(adapter_file)
    # The keys `save_pretrained` writes (save_embedding_layers=False: the LoRA matrices and the
    # special-token rows, not the frozen embedding); "auto" would also warn on every load.
    built = get_peft_model_state_dict(model.lm, save_embedding_layers=False)
    # Saved before an untied LM head trained its special rows (2026-12-01): they keep their built values.
    output = model.causal_lm.get_output_embeddings()
    head = next((f".{name}.token_adapter." for name, m in model.causal_lm.named_modules() if m is output), "\0")
    _check_weights(adapter_file, "adapter", adapter, [k for k in built if k in adapter or head not in k])
    with _naming(adapter_file, "adapter"):
        set_peft_model_state_dict(model.lm, {**built, **adapter})
    heads_file = directory / HEADS_FILE
    with _naming(heads_file, "head"):
        heads = load_file(heads_file)
    _check_weights(heads_file, "head", heads, head_state(model).keys())
    with _naming(heads_file, "head"):
        model.load_state_dict(heads, strict=False)


def _check_weights(path: Path, what: str, weights: dict[str, torch.Tensor], expected) -> None:
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: {what} weights do not fit this model (from another model or damaged): "
                         f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    not_float = sorted(k for k, t in weights.items() if not t.is_floating_point())
    if not_float:
        raise ValueError(f"{path}: {what} weights must be floating point; {not_float[0]} is {weights[not_float[0]].dtype}")


@contextmanager
def _naming(path: Path, what: str):
    """A damaged file or one from another model: a ValueError that names the file, with the first
    two lines of torch's error (a size mismatch runs to one line per tensor), not a key dump."""
    try:
        yield
    except (RuntimeError, OSError, SafetensorError, KeyError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        brief = " ".join(lines[:2]) + (f" (+{len(lines) - 2} more)" if len(lines) > 2 else "")
        raise ValueError(f"{path}: {what} weights cannot be loaded into this model ({brief})") from None


def init_from_checkpoint(model: PECRS, config: RunConfig, name_or_path: str | Path) -> Path:
    """Start training from a checkpoint (train.init_from): its adapter and heads go into `model`,
    built from `config`. The checkpoint's model section must equal config.model but for where the
    backbone is read from, else a ValueError names the fields that differ. Returns the folder."""
    directory = checkpoint_dir(name_or_path)
    meta = read_meta(directory)
    # The backbone first: with another architecture no setting could make the weights fit.
    check_architecture(model, meta, f"train.init_from={name_or_path} ({directory})")
    check_same_model(config, directory, f"train.init_from={name_or_path}")
    warn_if_other_backbone(model, meta, directory)
    load_weights(model, directory)
    return directory


def check_same_model(config: RunConfig, directory: Path, what: str) -> None:
    """A ValueError naming every model.* setting of `config` (but where the backbone is read from)
    that differs from the checkpoint in `directory`: its weights would not fit, or would mean
    something else (another item text, another context length). `what` starts the message."""
    theirs = dataclasses.asdict(RunConfig.from_dict(read_meta(directory)["config"]).model)
    ours = dataclasses.asdict(config.model)
    differ = [k for k in sorted(set(theirs) | set(ours)) if k != "backbone" and theirs.get(k) != ours.get(k)]
    if differ:
        raise ValueError(f"{what}: {directory / CONFIG_FILE} was trained with other model settings: "
                         + ", ".join(f"model.{k} is {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ))
