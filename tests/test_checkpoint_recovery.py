"""Checkpoint swaps that crash (pecrs.pretrained.recover_checkpoint), and trainer states that are
loaded without running pickled code (torch.load(weights_only=True))."""
import json
import os
from pathlib import Path

import pytest
import torch

import pecrs.pretrained
from pecrs.config import RunConfig
from pecrs.experiments.runs import batch_timing
from pecrs.pretrained import (CONFIG_FILE, build_model, checkpoint_complete, load_weights,
                              recover_checkpoint, save_pretrained)

STATE = "trainer_state.pt"


def fake_checkpoint(folder: Path, tag: str, complete: bool = True, extra=(STATE,)) -> Path:
    """A checkpoint folder laid out as save_pretrained writes it, `tag` in its config."""
    folder.mkdir(parents=True)
    (folder / "adapter").mkdir()
    (folder / "tokenizer").mkdir()
    (folder / "heads.safetensors").write_bytes(b"weights")
    for name in extra:
        torch.save({"state": {"tag": tag, "global_step": 3}}, folder / name)
    if complete:  # pecrs_config.json is written last
        (folder / CONFIG_FILE).write_text(json.dumps({"tag": tag, "extra_files": list(extra)}))
    return folder


def tag_of(folder: Path) -> str:
    return json.loads((folder / CONFIG_FILE).read_text())["tag"]


def siblings(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_crash_between_the_renames_keeps_the_newer_checkpoint(tmp_path):
    fake_checkpoint(tmp_path / "last.old", "older")
    fake_checkpoint(tmp_path / "last.tmp", "newer")
    assert recover_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert tag_of(tmp_path / "last") == "newer" and siblings(tmp_path) == ["last"]
    assert torch.load(tmp_path / "last" / STATE, weights_only=True)["state"]["tag"] == "newer"


def test_half_written_tmp_falls_back_to_old(tmp_path):
    fake_checkpoint(tmp_path / "last.old", "older")
    fake_checkpoint(tmp_path / "last.tmp", "newer", complete=False)   # crashed while writing
    assert recover_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert tag_of(tmp_path / "last") == "older" and siblings(tmp_path) == ["last"]


def test_tmp_missing_a_listed_file_is_incomplete(tmp_path):
    fake_checkpoint(tmp_path / "last.old", "older")
    tmp = fake_checkpoint(tmp_path / "last.tmp", "newer")
    (tmp / STATE).unlink()
    assert not checkpoint_complete(tmp) and checkpoint_complete(tmp_path / "last.old")
    recover_checkpoint(tmp_path / "last")
    assert tag_of(tmp_path / "last") == "older"


def test_first_save_interrupted_before_its_rename(tmp_path):
    fake_checkpoint(tmp_path / "best.tmp", "first", extra=())
    assert recover_checkpoint(tmp_path / "best") == tmp_path / "best"
    assert tag_of(tmp_path / "best") == "first"


def test_existing_checkpoint_is_kept(tmp_path):
    fake_checkpoint(tmp_path / "last", "current")
    fake_checkpoint(tmp_path / "last.tmp", "half", complete=False)
    assert recover_checkpoint(tmp_path / "last") == tmp_path / "last"
    assert tag_of(tmp_path / "last") == "current"


@pytest.mark.parametrize("config_text", [None, "{not json", "[]", '{"extra_files": 5}'])
def test_nothing_complete_recovers_nothing(tmp_path, config_text):
    tmp = fake_checkpoint(tmp_path / "last.tmp", "half", complete=False)
    if config_text is not None:
        (tmp / CONFIG_FILE).write_text(config_text)
    assert recover_checkpoint(tmp_path / "last") is None
    assert not (tmp_path / "last").exists() and (tmp_path / "last.tmp").is_dir()
    assert recover_checkpoint(tmp_path / "nothing") is None


def tiny_config():
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = "tiny-llama", 16
    cfg.model.lora_dropout = 0.0
    return cfg


def test_real_save_crashing_between_renames(tmp_path, monkeypatch):
    """save_pretrained twice, the second killed between its renames: the second one is recovered,
    loads into a model, and its trainer state loads with weights_only=True."""
    cfg = tiny_config()
    model = build_model(cfg, seed=0)
    last = tmp_path / "last"
    save_pretrained(model, cfg, last, {"trainer": {"step": 1}}, extra_files={STATE: {"state": {"global_step": 1}}})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}

    real_replace, calls = os.replace, []

    def crash_on_second_rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src).name == "last.tmp":
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(pecrs.pretrained.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, cfg, last, {"trainer": {"step": 2}},
                        extra_files={STATE: {"state": {"global_step": 2}}})
    monkeypatch.setattr(pecrs.pretrained.os, "replace", real_replace)
    assert ("last", "last.old") in calls and siblings(tmp_path) == ["last.old", "last.tmp"]

    assert recover_checkpoint(last) == last and siblings(tmp_path) == ["last"]
    assert json.loads((last / CONFIG_FILE).read_text())["trainer"] == {"step": 2}
    assert torch.load(last / STATE, weights_only=True)["state"]["global_step"] == 2
    fresh = build_model(cfg, seed=1)
    load_weights(fresh, last)
    for k, v in fresh.state_dict().items():
        if "lora_B" in k:
            assert torch.equal(v, expected[k])


def test_crash_while_writing_extra_files_leaves_an_incomplete_tmp(tmp_path, monkeypatch):
    cfg = tiny_config()
    model = build_model(cfg, seed=0)

    def killed(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pecrs.pretrained.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, cfg, tmp_path / "last", extra_files={STATE: {"x": 1}})
    assert not checkpoint_complete(tmp_path / "last.tmp")
    assert recover_checkpoint(tmp_path / "last") is None


# ---- pickled code in a trainer state is never run ------------------------------------------------

RAN = []


def _payload():
    RAN.append(True)
    return {"global_step": 99}


class Evil:
    def __reduce__(self):
        return (_payload, ())


def test_experiment_runner_loads_trainer_state_weights_only(tmp_path):
    (tmp_path / "last").mkdir()
    torch.save({"state": Evil()}, tmp_path / "last" / STATE)
    timing = batch_timing(tmp_path, RunConfig())
    assert RAN == [] and timing["train_batches"] == 0
    torch.save({"state": {"global_step": 7}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}}},
               tmp_path / "last" / STATE)
    assert batch_timing(tmp_path, RunConfig())["train_batches"] == 7


def test_no_unsafe_torch_load_left():
    root = Path(pecrs.pretrained.__file__).parent
    for path in [root / "pretrained.py", *sorted((root / "experiments").glob("*.py"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{n}: {line.strip()}"
