"""Training resumes after a crash and ends exactly where an uninterrupted run ends."""
import json
from dataclasses import asdict

import torch
from safetensors.torch import load_file

from pecrs.config import RunConfig
from pecrs.train import train

from test_learning import ITEMS, dialogues


def write_dataset(folder):
    folder.mkdir()
    with open(folder / "items.jsonl", "w") as f:
        for it in ITEMS:
            f.write(json.dumps(asdict(it)) + "\n")
    for split, seed, n in (("train", 0, 12), ("dev", 1, 4)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for d in dialogues(seed, n):
                turns = [{"role": t.role, "text": t.text, "items": list(t.items)} for t in d.turns]
                f.write(json.dumps({"id": d.id, "turns": turns}) + "\n")


def tiny_config(dataset) -> RunConfig:
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = "tiny-llama", 16
    cfg.model.context_max_tokens, cfg.model.response_max_tokens = 64, 16
    t = cfg.train
    t.dataset, t.epochs, t.batch_size, t.lr, t.warmup_epochs = str(dataset), 2, 4, 1e-3, 0.5
    t.m_train, t.m_inference, t.checkpoint_every, t.eval_batch_size = 6, 16, 1, 8
    return cfg


def test_crash_then_resume_matches_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    train(cfg, tmp_path / "straight", progress=False)
    # "Crash" after 4 batches (mid-epoch 2: 3 batches per epoch), then rerun the same command.
    state = train(cfg, tmp_path / "resumed", progress=False, stop_after_steps=4)
    assert state.get("stopped_early") and state["epoch"] == 1 and state["batch"] == 1
    train(cfg, tmp_path / "resumed", progress=False)
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(tmp_path / "straight" / "last" / name)
        b = load_file(tmp_path / "resumed" / "last" / name)
        assert a.keys() == b.keys() and len(a) > 0
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)
    logs = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("straight", "resumed")]
    assert logs[0][-1]["dev_recall_mean"] == logs[1][-1]["dev_recall_mean"]
    assert logs[0][-1]["global_step"] == logs[1][-1]["global_step"] == 6
