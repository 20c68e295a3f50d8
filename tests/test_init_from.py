"""train.init_from: fine-tuning starts from a checkpoint's adapter and heads, not from fresh ones."""
import pytest
import torch
from safetensors.torch import load_file

from pecrs.export import model_card
from pecrs.pretrained import read_meta
from pecrs.testing import tiny_config, write_dataset
from pecrs.train import train

WEIGHTS = ("heads.safetensors", "adapter/adapter_model.safetensors")


def same_weights(a, b) -> bool:
    return all(torch.equal(load_file(a / n)[k], load_file(b / n)[k]) for n in WEIGHTS for k in load_file(a / n))


def test_init_from_starts_from_the_checkpoint_and_a_model_mismatch_is_named(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    train(cfg, tmp_path / "first", progress=False)
    # One update inside the warm-up's first step moves nothing (lr 0 there): what last/ holds
    # after it is what the run started from.
    cfg.train.warmup_steps = 5
    cfg.train.seed = 7  # a fresh start would initialise differently from the first run
    train(cfg, tmp_path / "fresh", progress=False, stop_after_steps=1)
    cfg.train.init_from = str(tmp_path / "first")
    train(cfg, tmp_path / "tuned", progress=False, stop_after_steps=1)
    assert same_weights(tmp_path / "first" / "best", tmp_path / "tuned" / "last")
    assert not same_weights(tmp_path / "first" / "best", tmp_path / "fresh" / "last")
    # the model card says where the weights started
    tuned = tmp_path / "tuned" / "last"
    card = model_card("tuned", read_meta(tuned), [], None, tuned)
    assert f"fine-tuned from `{tmp_path / 'first'}`" in card
    assert "fine-tuned" not in model_card("fresh", read_meta(tmp_path / "fresh" / "last"), [], None, tuned)

    cfg.model.lora_r = cfg.model.lora_r * 2
    with pytest.raises(ValueError, match=r"model\.lora_r is \d+ there, \d+ here"):
        train(cfg, tmp_path / "mismatch", progress=False, stop_after_steps=1)


def test_a_stopped_fine_tune_resumes_instead_of_starting_over(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    train(cfg, tmp_path / "first", progress=False)
    cfg.train.init_from = str(tmp_path / "first")
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, stop_after_steps=2)
    train(cfg, tmp_path / "resumed", progress=False)   # reloading the checkpoint here would undo 2 steps
    assert same_weights(tmp_path / "straight" / "last", tmp_path / "resumed" / "last")
