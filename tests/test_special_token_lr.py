"""train.special_token_lr_scale: the four special-token rows learn at lr x scale, everything else at lr."""
from safetensors.torch import load_file

from pecrs.config import RunConfig
from pecrs.experiments.keys import train_key
from pecrs.pretrained import build_model
from pecrs.testing import tiny_config, write_dataset
from pecrs.train import parameter_groups, train

DELTA = "trainable_tokens_delta"


def _tiny_model():
    cfg = RunConfig()
    cfg.model.backbone = "tiny-llama"
    return build_model(cfg, seed=0)


def test_scale_puts_the_special_rows_in_their_own_group():
    model = _tiny_model()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = parameter_groups(model, 1e-4, 10.0)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for n, p in trainable if DELTA in n]
    assert len(groups[0]["params"]) + 1 == len(trainable)
    # Scale 1: one group in the model's order, as before the setting (old optimiser states resume).
    (single,) = parameter_groups(model, 1e-4, 1.0)
    assert [id(p) for p in single["params"]] == [id(p) for _, p in trainable]


def test_first_update_moves_special_rows_scale_times_further(tmp_path):
    """Adam's first update moves every coordinate by lr * g / (|g| + eps), i.e. by lr wherever the
    gradient is not tiny: the special rows' largest move is 10x that of the LoRA weights."""
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    t = cfg.train
    t.lr, t.warmup_steps, t.special_token_lr_scale, t.epochs = 1e-3, 0, 10.0, 1
    start = {n: p.detach().clone() for n, p in build_model(cfg, seed=t.seed).named_parameters() if p.requires_grad}
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)
    saved = load_file(tmp_path / "run" / "last" / "adapter" / "adapter_model.safetensors")
    moved = {}
    for name, before in start.items():
        key = name.removeprefix("lm.").replace(".default", "")
        if key in saved:
            moved[name] = float((saved[key] - before).abs().max())
    delta_move = max(v for n, v in moved.items() if DELTA in n)
    lora_move = max(v for n, v in moved.items() if "lora_" in n)
    assert abs(delta_move - 1e-2) < 1e-4, delta_move
    assert abs(lora_move - 1e-3) < 1e-5, lora_move


def test_default_scale_leaves_experiment_keys_unchanged():
    cfg = RunConfig()
    before = train_key(cfg)
    cfg.train.special_token_lr_scale = 10.0
    assert train_key(cfg) != before
    cfg.train.special_token_lr_scale = 1.0
    assert train_key(cfg) == before
