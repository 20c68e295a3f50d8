"""Training resumes after a crash and ends exactly where an uninterrupted run ends."""
import json

import torch
from safetensors.torch import load_file

from pecrs.testing import tiny_config, write_dataset
from pecrs.train import train


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


def test_crash_between_checkpoint_renames_resumes_and_best_is_the_best_dev_epoch(tmp_path, monkeypatch):
    """A crash between the two renames of a save leaves last.old and last.tmp and no last/: the
    rerun resumes from them (no restart from scratch). Also pins which epoch best/ keeps, the
    mid-epoch resume marker in metrics.jsonl and the negatives the real training step uses."""
    import shutil

    import pecrs.train as train_module

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs = 3
    seen = []
    real_plan = train_module.plan_step

    def spy_plan(batch, *args, **kwargs):
        inputs = real_plan(batch, *args, **kwargs)
        seen.append((batch.target.clone(), inputs.recall_negatives.clone(), inputs.rerank_negatives.clone()))
        return inputs

    monkeypatch.setattr(train_module, "plan_step", spy_plan)
    train(cfg, tmp_path / "straight", progress=False)
    state = train(cfg, tmp_path / "run", progress=False, stop_after_steps=4)
    assert state["batch"] == 1
    last = tmp_path / "run" / "last"
    shutil.copytree(last, last.with_name("last.tmp"))
    last.rename(last.with_name("last.old"))
    train(cfg, tmp_path / "run", progress=False)
    assert not last.with_name("last.old").exists() and not last.with_name("last.tmp").exists()
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(tmp_path / "straight" / "last" / name), load_file(last / name)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("train_from_batch") for r in records] == [None, 2, None]  # epoch 2 resumed at its batch 2
    # best/ holds the first epoch with the highest dev recall mean
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    means = [r["dev_recall_mean"] for r in records]
    best = json.loads((tmp_path / "straight" / "best" / "pecrs_config.json").read_text())
    assert best["epoch"] == means.index(max(means)) + 1
    assert best["dev"]["recall_mean"] == max(means)
    # the negatives of every real step: none is a positive of its batch, rerank ⊂ recall (shared)
    assert seen
    for target, recall, rerank in seen:
        positives = set(target[target >= 0].tolist())
        assert positives and not positives & set(recall.flatten().tolist())
        assert set(rerank.flatten().tolist()) <= set(recall.flatten().tolist())


def test_a_deadline_stop_is_dev_evaluated_and_can_become_best(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.max_train_minutes = 1e-9  # stops after the first batch
    state = train(cfg, tmp_path / "run", progress=False)
    assert state["stopped_early"] and state["batch"] == 1
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["stopped"] == "max_train_minutes" and "dev_recall_mean" in record
    best = json.loads((tmp_path / "run" / "best" / "pecrs_config.json").read_text())
    assert (best["epoch"], best["batch"]) == (0, 1) and best["dev"]["recall_mean"] == record["dev_recall_mean"]
    # resuming continues from last/ with the best so far remembered
    state = train(cfg, tmp_path / "run", progress=False)
    assert state["best"] >= record["dev_recall_mean"]


def test_a_resumed_run_that_finishes_is_not_reported_as_stopped(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    assert train(cfg, tmp_path / "run", progress=False, stop_after_steps=1).get("stopped_early")
    state = train(cfg, tmp_path / "run", progress=False)
    assert state["epoch"] == 1 and not state.get("stopped_early")
    assert not train(cfg, tmp_path / "run", progress=False).get("stopped_early")  # nothing left to do


def test_a_learning_rate_changed_on_resume_is_said_to_be_the_saved_one(tmp_path, capsys):
    """The scheduler restores the base rates it was saved with, so train.lr changed on resume has
    no effect: said, rather than a run that silently trains at the old rate."""
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)
    capsys.readouterr()
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=2)
    assert "train.lr" not in capsys.readouterr().err
    started = cfg.train.lr
    cfg.train.lr = started * 10
    train(cfg, tmp_path / "run", progress=False)
    assert f"keeps the learning rate it started with ({started:g}, not {started * 10:g})" in capsys.readouterr().err


def test_a_finished_run_resumed_with_more_epochs_trains_them_on_the_longer_schedule(tmp_path):
    """tools/cpu/train_inspired.sh's second pass: a one-epoch run whose schedule ended at lr 0,
    rerun with train.epochs=2, must re-plan the linear decay over both epochs (lr > 0 again in
    epoch 2), not keep the ended one (lr 0: the second pass would change nothing)."""
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.epochs, cfg.train.warmup_epochs = 1, 0.0
    train(cfg, tmp_path / "run", progress=False)
    adapter = tmp_path / "run" / "last" / "adapter" / "adapter_model.safetensors"
    after_one = load_file(adapter)
    cfg.train.epochs = 2
    state = train(cfg, tmp_path / "run", progress=False)
    assert (state["epoch"], state["global_step"]) == (2, 6)
    after_two = load_file(adapter)
    assert any(not torch.equal(after_one[k], after_two[k]) for k in after_one)
    scheduler = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)["scheduler"]
    assert scheduler["last_epoch"] == 6 and scheduler["_last_lr"][0] == 0.0  # the re-planned decay's end


def test_resuming_with_other_model_settings_is_refused_before_anything_changes(tmp_path):
    """Rerunning `pecrs train` into a run folder with last/ resumes it: with another model section the
    weights would not fit (lora_r) or would mean something else (context length), so it stops with
    every differing setting named, and the run's config.yaml still describes its checkpoint."""
    import pytest

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    assert train(cfg, tmp_path / "run", progress=False, stop_after_steps=1).get("stopped_early")
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    cfg.model.lora_r, cfg.model.context_max_tokens = cfg.model.lora_r * 2, cfg.model.context_max_tokens - 1
    with pytest.raises(ValueError, match=r"resuming .*model\.context_max_tokens is .*model\.lora_r is"):
        train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml


def test_resuming_on_another_backbone_is_refused_by_its_shapes_and_leaves_config_yaml(tmp_path):
    """`model.backbone` may change on resume (another copy of the same model), so check_same_model
    lets it through; another architecture is then refused by its shapes, before config.yaml is
    replaced (it once named the new backbone after a refusal that dumped weight names)."""
    import pytest

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    assert train(cfg, tmp_path / "run", progress=False, stop_after_steps=1).get("stopped_early")
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    cfg.model.backbone = "tiny-gpt2" if cfg.model.backbone != "tiny-gpt2" else "tiny-llama"
    with pytest.raises(ValueError, match=r"^resuming .*run \(another --output-dir starts a new run\): checkpoint "
                                         r"was trained on a \w+ backbone .* but 'tiny-"):
        train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml


def test_a_missing_train_split_is_named(tmp_path):
    import pytest

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.train_split = "nope"
    with pytest.raises(ValueError, match=r"train\.train_split: .* has no split 'nope' \(it has .*train"):
        train(cfg, tmp_path / "run", progress=False)


def test_resuming_on_other_data_is_refused_and_leaves_the_run_as_it_was(tmp_path):
    """Reusing a run folder with another dataset (or split, or slice) would "resume" the finished
    run and train nothing, or continue it on other data, while config.yaml claimed the new data."""
    import os
    import re
    import shutil

    import pytest

    data, other = tmp_path / "data", tmp_path / "other"
    write_dataset(data)
    write_dataset(other)
    (other / "dev.jsonl").write_text((other / "dev.jsonl").read_text().splitlines()[0] + "\n")  # other files
    cfg = tiny_config(data)
    assert train(cfg, tmp_path / "run", progress=False, stop_after_steps=1).get("stopped_early")
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    for change, named in ((dict(dataset=str(other)), rf"train\.dataset is '{re.escape(str(data))}' there, "
                                                     rf"'{re.escape(str(other))}' here"),
                          (dict(dataset=str(tmp_path / "nonexistent")), r"train\.dataset is .*nonexistent' here"),
                          (dict(dev_split="valid", max_train_samples=8),
                           r"train\.dev_split is 'dev' there, 'valid' here, train\.max_train_samples is None "
                           r"there, 8 here")):
        changed = tiny_config(data)
        for key, value in change.items():
            setattr(changed.train, key, value)
        with pytest.raises(ValueError, match=rf"resuming .*\(another --output-dir starts a new run\): .*was "
                                             rf"trained on other data: {named}$"):
            train(changed, run, progress=False)
        assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before, change
    # the same data: spelled otherwise, or a byte copy elsewhere (a run moved with its data), resumes
    cfg.train.dataset = os.path.relpath(data)   # relative to the working directory
    assert train(cfg, run, progress=False, stop_after_steps=1)["batch"] == 2
    shutil.copytree(data, tmp_path / "copy")
    cfg.train.dataset = str(tmp_path / "copy")
    assert train(cfg, run, progress=False, stop_after_steps=1)["batch"] == 3


def test_a_run_saved_before_the_data_record_compares_its_config(tmp_path):
    """last/ of a run made before last/ recorded its data: the same spelling resumes (as it did),
    another folder is refused."""
    import pytest

    data, other = tmp_path / "data", tmp_path / "other"
    write_dataset(data)
    write_dataset(other)
    cfg = tiny_config(data)
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)
    meta_path = tmp_path / "run" / "last" / "pecrs_config.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("data", None)   # what older versions saved
    meta_path.write_text(json.dumps(meta))
    cfg.train.dataset = str(other)
    with pytest.raises(ValueError, match=r"train\.dataset is '.*data' there, '.*other' here"):
        train(cfg, tmp_path / "run", progress=False)
    cfg.train.dataset = str(data)
    assert train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)["batch"] == 2


def test_a_start_that_fails_to_load_writes_nothing(tmp_path):
    """config.yaml is written once the data has loaded and been checked: a failed first start
    leaves no run folder, a failed start in a run folder without last/ leaves its config.yaml."""
    import pytest

    data = tmp_path / "data"
    write_dataset(data)
    with pytest.raises(Exception, match="nonexistent"):
        train(tiny_config(tmp_path / "nonexistent"), tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=1)
    (tmp_path / "run" / "last").rename(tmp_path / "run" / "kept")   # no last/: a new start, not a resume
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    cfg.train.train_split = "nope"
    with pytest.raises(ValueError, match=r"has no split 'nope'"):
        train(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml


def test_grad_accum_counts_updates_within_each_epoch_and_resumes_exactly(tmp_path):
    """With train.grad_accum = 2 and 3 batches an epoch, an epoch is 2 updates (the last batch
    closes its update alone), as the schedule plans: warm-up (1 epoch) ends with epoch 1, the
    learning rate reaches 0 with the last epoch, and no micro-batch is carried into the next
    epoch. A stop between the micro-batches of an update waits for the update, so a resumed
    run ends where an uninterrupted one does."""
    from pecrs.step import scaled_lr

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.grad_accum, cfg.train.warmup_epochs, cfg.train.dev_split = 2, 1, ""
    train(cfg, tmp_path / "straight", progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["global_step"] for m in metrics] == [2, 4]
    assert metrics[0]["lr"] == scaled_lr(cfg.train, cfg.train.batch_size * 2) and metrics[1]["lr"] == 0.0
    trainer = torch.load(tmp_path / "straight" / "last" / "trainer_state.pt", weights_only=True)
    assert trainer["scheduler"]["last_epoch"] == trainer["state"]["global_step"] == 4

    state = train(cfg, tmp_path / "resumed", progress=False, stop_after_steps=4)   # 4th: epoch 2's first batch
    assert state.get("stopped_early") and (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 3)
    train(cfg, tmp_path / "resumed", progress=False)
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a, b = (load_file(tmp_path / run / "last" / name) for run in ("straight", "resumed"))
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)


def test_each_epoch_reshuffles_the_training_order(tmp_path, monkeypatch):
    import pecrs.train as train_module

    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.dev_split = ""
    seen, real_collate = [], train_module.collate
    monkeypatch.setattr(train_module, "collate", lambda encoded, *a: seen.append(
        tuple((tuple(e.context_ids), e.target) for e in encoded)) or real_collate(encoded, *a))
    train(cfg, tmp_path / "run", progress=False)
    assert len(seen) == 6                                   # 2 epochs of 3 batches
    assert seen[:3] != seen[3:] and sorted(sum(map(list, seen[:3]), [])) == sorted(sum(map(list, seen[3:]), []))


def test_max_train_minutes_is_minutes(tmp_path, monkeypatch):
    """train.max_train_minutes = 1 on a clock that moves 10 s at every reading: the run stops
    within its first epoch (a deadline counted in other units would let it finish)."""
    from types import SimpleNamespace

    import pecrs.train as train_module

    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)
    cfg.train.max_train_minutes, cfg.train.dev_split = 1, ""
    state = train(cfg, tmp_path / "run", progress=False)
    assert state.get("stopped_early") and state["epoch"] == 0


def test_every_setting_that_picks_the_training_samples_is_checked_on_resume(tmp_path):
    """Each of DATA_KEYS changes which samples a run trains or is selected on: resuming with any
    one of them changed is refused by name (else the run would go on over other samples)."""
    import pytest

    from pecrs.run_dataset import DATA_KEYS, check_same_data

    data = tmp_path / "data"
    write_dataset(data)
    train(tiny_config(data), tmp_path / "run", progress=False, stop_after_steps=1)
    other = {"train_split": "dev", "dev_split": "test", "max_train_samples": 8, "max_eval_samples": 4,
             "targets_only": True, "fresh_targets_only": True, "redial_mentions": "all"}
    assert set(other) == set(DATA_KEYS)
    check_same_data(tiny_config(data), tmp_path / "run" / "last", "resuming")       # unchanged: resumes
    for key, value in other.items():
        changed = tiny_config(data)
        setattr(changed.train, key, value)
        before = getattr(tiny_config(data).train, key)
        with pytest.raises(ValueError, match=rf"train\.{key} is {before!r} there, {value!r} here"):
            check_same_data(changed, tmp_path / "run" / "last", "resuming")
