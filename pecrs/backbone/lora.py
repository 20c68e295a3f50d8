"""The four special tokens of §3.2 and LoRA (§3.5): what trains, and how it is wired into peft."""
from __future__ import annotations

import inspect
import warnings
from functools import lru_cache
from typing import NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

from pecrs.data import SPECIAL_TOKENS

SPECIAL_ROW_JITTER_SEED = 0   # the new rows' jitter is the same in every run, so a seed fixes the model


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
    generator = torch.Generator().manual_seed(SPECIAL_ROW_JITTER_SEED)
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
    input and output vectors stay one parameter, as in the untouched model. An untied model
    (many larger Llama-likes) gets a second delta on its LM head: §3.5 trains the special tokens'
    embeddings, and [ITEM]'s output row is what lets a reply name an item at all.
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
        trainable_token_indices=_trainable_token_targets(model, ids),
    )
    with warnings.catch_warnings():
        # peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` (transformers 5):
        # a FutureWarning on every model load that users cannot act on.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    return use_row_trainable_tokens(peft_model)


def _trainable_token_targets(model, ids: list[int]):
    """peft's `trainable_token_indices`: the rows alone (the input embedding, and a tied head with
    it), or, when the LM head has its own matrix, {input embedding: rows, LM head: rows}."""
    inputs, output = model.get_input_embeddings(), model.get_output_embeddings()
    if output is None or output.weight.data_ptr() == inputs.weight.data_ptr():
        return ids
    names = {id(module): name for name, module in model.named_modules()}
    return {names[id(inputs)]: ids, names[id(output)]: ids}


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
            # LM head: frozen logits, then the special columns. Its bias kept (peft 0.21 drops it, so a
            # biased untied head would differ from its merged form, which evaluation serves).
            bias = base.bias
            out = F.linear(x, base.weight, bias)
            special = F.linear(x, delta.to(x.dtype), None if bias is None else bias[indices].to(x.dtype))
            return out.index_copy_(-1, indices.to(out.device), special.to(out.dtype))

        def _device_indices(self, name, device):
            """The trainable rows as a long tensor on `device`: the buffer `use_row_trainable_tokens`
            registers, which moves with the model and exists before any torch.compile or CUDA-graph
            capture. (A tensor first made inside a captured step is graph memory that the next
            replay overwrites: cached, it broke the eager fallback of a failed CUDA-graph step too.)"""
            indices = getattr(self, _indices_buffer(name), None)
            if indices is None or indices.device != device:   # an adapter added after the switch
                return torch.as_tensor(self.token_indices[name], device=device)
            return indices

    return RowTrainableTokensLayer


def use_row_trainable_tokens(model):
    """Switch every peft TrainableTokensLayer in `model` to the row-only forward above (in place)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    cls = _row_trainable_tokens_class()
    for module in model.modules():
        if type(module) is TrainableTokensLayer:
            module.__class__ = cls
            for name, rows in module.token_indices.items():   # not saved: rebuilt from the config
                module.register_buffer(_indices_buffer(name), torch.as_tensor(
                    rows, dtype=torch.long, device=module.base_layer.weight.device), persistent=False)
    return model


def _indices_buffer(adapter: str) -> str:
    """The buffer name of an adapter's trainable row indices (a buffer name holds no ".")."""
    return "pecrs_token_indices_" + adapter.replace(".", "_")


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
