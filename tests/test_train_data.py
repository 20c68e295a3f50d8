"""What training does with splits whose samples recommend nothing: a dev split without a target is
no dev split (best/ is the latest model, said once), a max_eval_samples slice counts dev samples
with a target, a train split without a target is refused before anything is written, and
metrics.jsonl stays valid JSON (NaN as null)."""
import json
import math

import pytest

import pecrs.train as train_module
from pecrs.testing import tiny_config, write_dataset, write_jsonl
from pecrs.train import json_line, train

NO_ITEM = {"id": "v1", "turns": [{"role": "seeker", "text": "Hi"}, {"role": "recommender", "text": "What genre?"},
                                 {"role": "seeker", "text": "Fantasy"}, {"role": "recommender", "text": "Let me think."}]}


def strict_records(path):
    """metrics.jsonl parsed as JSON is: bare NaN / Infinity (Python's json accepts them) fail."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def rewrite_split(folder, split, rows):
    write_jsonl(folder / f"{split}.jsonl", rows)


def no_item(n):
    return {**NO_ITEM, "id": f"v{n}"}


def with_item(n):
    return {"id": f"t{n}", "turns": [{"role": "seeker", "text": "Something with a dragon"},
                                     {"role": "recommender", "text": "Try [ITEM]", "items": ["3"]}]}


def test_a_dev_split_without_targets_selects_the_latest_model(tmp_path, capsys):
    data = tmp_path / "data"
    write_dataset(data)
    rewrite_split(data, "dev", [NO_ITEM])
    state = train(tiny_config(data), tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("none of its 2 samples recommends an item") == 1, err   # said once, not at every epoch
    assert "split 'dev'" in err and "best/ is the latest evaluated model" in err
    records = strict_records(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and not any(k.startswith("dev_") for r in records for k in r)
    best = json.loads((tmp_path / "run" / "best" / "pecrs_config.json").read_text())
    assert best["epoch"] == 2 == state["best_epoch"]


def test_a_max_eval_samples_slice_without_targets_is_said_and_ranks_nothing(tmp_path, monkeypatch, capsys):
    """train.max_eval_samples keeps the first N dev samples, as every evaluation slices them; when
    none of those recommends an item, selection says so (naming the setting) and best/ is the
    latest model, instead of a run that never writes best/. A slice with targets ranks only them."""
    data = tmp_path / "data"
    write_dataset(data)
    rewrite_split(data, "dev", [NO_ITEM, with_item(1), with_item(2), with_item(3)])
    cfg = tiny_config(data)
    cfg.train.epochs, cfg.train.max_eval_samples = 1, 2
    ranked = []
    real = train_module.recall_only

    def spy(model, store, encoder, samples, *args, **kwargs):
        ranked.append(list(samples))
        return real(model, store, encoder, samples, *args, **kwargs)

    monkeypatch.setattr(train_module, "recall_only", spy)
    train(cfg, tmp_path / "run", progress=False)
    assert ranked == [] and "none of its 2 samples (train.max_eval_samples) recommends an item" in capsys.readouterr().err
    assert (tmp_path / "run" / "best").is_dir()
    cfg.train.max_eval_samples = 4
    train(cfg, tmp_path / "run4", progress=False)
    assert [len(s) for s in ranked] == [2] and all(x.target is not None for x in ranked[0])
    assert math.isfinite(strict_records(tmp_path / "run4" / "metrics.jsonl")[-1]["dev_recall_mean"])


def test_a_train_split_without_targets_is_refused_before_the_run_folder_exists(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    rewrite_split(data, "train", [no_item(n) for n in range(3)])
    with pytest.raises(ValueError, match=r"split 'train' of .*: none of its 6 training samples recommends a "
                                         r"catalog item.*train\.alpha=0 train\.beta=0"):
        train(tiny_config(data), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_dataset_is_named_with_its_key_before_the_backbone_loads(tmp_path, monkeypatch):
    """`pecrs train tiny` where ../shared is absent: the error names train.dataset and the folder
    the relative path was read from, and no backbone was loaded (a first SmolLM2 conversion is a
    minute)."""
    from pecrs.data import DataError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pecrs.prepare.build_model", lambda *a, **k: pytest.fail("the backbone loaded first"))
    with pytest.raises(DataError, match=rf"nowhere/data.*train\.dataset.*{tmp_path}.*train\.dataset=DIR"):
        train(tiny_config("nowhere/data"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_replies_alone_train_on_a_split_without_targets(tmp_path):
    data = tmp_path / "data"
    write_dataset(data)
    rewrite_split(data, "train", [no_item(n) for n in range(3)])
    cfg = tiny_config(data)
    cfg.train.epochs, cfg.train.alpha, cfg.train.beta = 1, 0.0, 0.0
    assert train(cfg, tmp_path / "run", progress=False)["epoch"] == 1
    assert (tmp_path / "run" / "best").is_dir()


def test_metrics_lines_write_nan_and_infinity_as_null():
    line = json_line({"epoch": 1, "train_loss": float("nan"), "train_gen": float("inf"), "lr": 1e-3})
    assert json.loads(line, parse_constant=lambda c: pytest.fail(c)) == {
        "epoch": 1, "train_loss": None, "train_gen": None, "lr": 1e-3}


def test_redial_format_data_without_forms_trains_with_redial_mentions_all(tmp_path):
    """ReDial-format data of one's own without respondentQuestions forms: the default "pecrs" rule
    links none of its mentions (training is refused and names the setting); with
    train.redial_mentions=all every @id of the catalog is an [ITEM] and the run trains."""
    from pecrs.testing import toy_items

    data = tmp_path / "rd"
    data.mkdir()
    write_jsonl(data / "items.jsonl", [{"id": it.id, "title": it.title, "year": it.year} for it in toy_items()])
    convs = [{"conversationId": str(n), "initiatorWorkerId": 1, "respondentWorkerId": 2, "movieMentions": {},
              "messages": [{"senderWorkerId": 1, "text": f"I liked @{n % 12}"},
                           {"senderWorkerId": 2, "text": f"Then try @{(n + 1) % 12}"}]} for n in range(8)]
    write_jsonl(data / "train_data.jsonl", convs)
    write_jsonl(data / "test_data.jsonl", convs[:2])
    cfg = tiny_config(data)
    cfg.train.epochs = 1
    with pytest.raises(ValueError, match="train.redial_mentions=all"):
        train(cfg, tmp_path / "pecrs-rule", progress=False)
    cfg.train.redial_mentions = "all"
    state = train(cfg, tmp_path / "all", progress=False)
    assert state["global_step"] > 0 and (tmp_path / "all" / "best").is_dir()
