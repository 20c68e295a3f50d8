"""train.init_from: fine-tuning starts from a checkpoint's adapter and heads, not from fresh ones."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from pecrs.export import model_card
from pecrs.pretrained import read_meta
from pecrs.testing import tiny_config, write_dataset
from pecrs.train import train

WEIGHTS = ("heads.safetensors", "adapter/adapter_model.safetensors")


def same_weights(a, b) -> bool:
    for name in WEIGHTS:
        ours, theirs = load_file(a / name), load_file(b / name)
        if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in ours):
            return False
    return True


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A finished one-epoch tiny run to fine-tune from, and its config."""
    root = tmp_path_factory.mktemp("init_from")
    write_dataset(root / "data")
    cfg = tiny_config(root / "data")
    cfg.train.epochs = 1
    train(cfg, root / "first", progress=False)
    return root / "first", cfg


def test_init_from_starts_from_the_checkpoint_and_a_model_mismatch_is_named(first, tmp_path):
    source, cfg = first
    cfg = copy.deepcopy(cfg)
    # One update inside the warm-up's first step moves nothing (lr 0 there): what last/ holds
    # after it is what the run started from.
    cfg.train.warmup_steps = 5
    cfg.train.seed = 7  # a fresh start would initialise differently from the first run
    train(cfg, tmp_path / "fresh", progress=False, stop_after_steps=1)
    cfg.train.init_from = str(source)
    train(cfg, tmp_path / "tuned", progress=False, stop_after_steps=1)
    assert same_weights(source / "best", tmp_path / "tuned" / "last")
    assert not same_weights(source / "best", tmp_path / "fresh" / "last")
    # the model card says where the weights started
    tuned = tmp_path / "tuned" / "last"
    card = model_card("tuned", read_meta(tuned), [], None, tuned)
    assert f"fine-tuned from `{source}`" in card
    assert "fine-tuned" not in model_card("fresh", read_meta(tmp_path / "fresh" / "last"), [], None, tuned)

    cfg.model.lora_r = cfg.model.lora_r * 2
    with pytest.raises(ValueError, match=r"model\.lora_r is \d+ there, \d+ here"):
        train(cfg, tmp_path / "mismatch", progress=False, stop_after_steps=1)


def test_a_stopped_fine_tune_resumes_instead_of_starting_over(first, tmp_path):
    source, cfg = first
    cfg = copy.deepcopy(cfg)
    cfg.train.init_from = str(source)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", progress=False, stop_after_steps=2)
    train(cfg, tmp_path / "resumed", progress=False)   # reloading the checkpoint here would undo 2 steps
    assert same_weights(tmp_path / "straight" / "last", tmp_path / "resumed" / "last")


def test_init_from_a_checkpoint_of_another_backbone_names_the_backbone(first, tmp_path):
    """Every model.* setting but the backbone matched, so the settings check passed and loading
    failed with a dump of adapter weight names: the architecture is checked first, as
    `load_pretrained` checks it."""
    from pecrs.pretrained import build_model, save_pretrained

    _, cfg = first
    gpt2 = copy.deepcopy(cfg)
    gpt2.model.backbone = "tiny-gpt2"
    save_pretrained(build_model(gpt2, seed=0), gpt2, tmp_path / "gpt2" / "best")
    cfg = copy.deepcopy(cfg)
    cfg.train.init_from = str(tmp_path / "gpt2")
    with pytest.raises(ValueError) as e:
        train(cfg, tmp_path / "tuned", progress=False, stop_after_steps=1)
    message = str(e.value)
    assert message.startswith(f"train.init_from={tmp_path / 'gpt2'} ({tmp_path / 'gpt2' / 'best'}): ")
    assert "checkpoint was trained on a gpt2 backbone" in message and "'tiny-llama' is a llama" in message
    assert "weights" not in message
    assert not (tmp_path / "tuned").exists()          # a refused start leaves no run folder behind


def test_a_checkpoint_with_another_vocabulary_is_refused_by_name(first):
    """Same architecture and hidden size, another tokenizer (added tokens): the embedding rows of
    the checkpoint cannot be the model's, and the message says which sizes differ."""
    from pecrs.pretrained import build_model, check_architecture

    run, cfg = first
    model = build_model(cfg, seed=0)
    meta = read_meta(run / "best")
    check_architecture(model, meta, "ck")                        # its own checkpoint fits
    with pytest.raises(ValueError, match=rf"^ck: .*vocabulary {len(model.tokenizer) + 1}\) but .*vocabulary "
                                         rf"{len(model.tokenizer)}\)"):
        check_architecture(model, {**meta, "vocab_size": len(model.tokenizer) + 1}, "ck")
