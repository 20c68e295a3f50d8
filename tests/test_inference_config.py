"""The config's inference section: one place for M_inference, decoding, batch size, re-rank chunk
and dtype, read by evaluation and serving alike; old configs and checkpoints still load."""
import json
import types

import pytest
import torch

from pecrs.config import ConfigError, InferenceConfig, RunConfig
from pecrs.pretrained import CONFIG_FILE
from pecrs.testing import TURNS, make_tiny_run


def test_old_train_keys_move_to_the_inference_section():
    cfg = RunConfig.from_dict({"train": {"m_inference": 32, "decoding": "greedy", "eval_batch_size": 4,
                                         "eval_generate": True, "epochs": 3}})
    assert cfg.inference == InferenceConfig(m_inference=32, decoding="greedy", batch_size=4)
    assert cfg.train.epochs == 3 and "m_inference" not in cfg.to_dict()["train"]
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"train\.m_inference \(32\) and inference\.m_inference \(31\) disagree"):
        RunConfig.from_dict({"train": {"m_inference": 32}, "inference": {"m_inference": 31}})


def test_overrides_by_either_name_replace_the_file_value_in_either_place(tmp_path):
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text("inference:\n  m_inference: 64\n  batch_size: 16\n")
    old.write_text("train:\n  m_inference: 64\n  eval_batch_size: 16\n")
    for path in (new, old):
        cfg = RunConfig.load(path, ["train.m_inference=32", "train.eval_generate=true"])
        assert (cfg.inference.m_inference, cfg.inference.batch_size) == (32, 16)
        cfg = RunConfig.load(path, ["inference.batch_size=8"])
        assert (cfg.inference.m_inference, cfg.inference.batch_size) == (64, 8)
    with pytest.raises(ConfigError, match="section 'inference' must be a mapping"):
        RunConfig.from_dict({"train": {"m_inference": 5}, "inference": [1]})


def test_setting_an_unknown_attribute_fails_and_names_the_new_home():
    cfg = RunConfig()
    with pytest.raises(AttributeError, match=r"TrainConfig has no setting 'm_inference' \(it is inference\.m_inference"):
        cfg.train.m_inference = 8
    with pytest.raises(AttributeError, match="InferenceConfig has no setting 'm_infrence'"):
        cfg.inference.m_infrence = 8


def test_recommender_reads_the_checkpoint_inference_section(tmp_path):
    from pecrs.recommender import Recommender

    run, items = make_tiny_run(tmp_path)
    meta_path = run / "best" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    meta["config"]["inference"].update(m_inference=5, decoding="greedy", dtype="float32", rerank_chunk_size=2,
                                       no_repeat_ngram=3)
    meta_path.write_text(json.dumps(meta))
    rec = Recommender.from_pretrained(run, catalog=items, device="cpu", cache_dir=False)
    assert (rec.m_inference, rec.decoding, rec.precision.dtype) == (5, "greedy", torch.float32)
    assert rec.no_repeat_ngram == 3
    assert rec.config.inference.rerank_chunk_size == 2
    # The chunk only bounds memory: the same ranking as one pass over all candidates.
    chunked = [r.item.id for r in rec.recommend(TURNS, k=5)]
    rec.config.inference.rerank_chunk_size = 1024
    assert chunked == [r.item.id for r in rec.recommend(TURNS, k=5)]
    # Arguments override the section for this recommender only.
    other = Recommender.from_pretrained(run, catalog=items, device="cpu", cache_dir=False, m_inference=7,
                                        decoding="top_k")
    assert (other.m_inference, other.decoding) == (7, "top_k")
    # save_pretrained records the recommender's choices in the saved config's section.
    rec.m_inference = 6
    back = Recommender.from_pretrained(rec.save_pretrained(tmp_path / "saved"), device="cpu", cache_dir=False)
    assert (back.config.inference.m_inference, back.decoding) == (6, "greedy")
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        Recommender.from_pretrained(run, catalog=items, device="cpu", cache_dir=False, decoding="telepathy")


def test_a_call_precision_and_a_dict_decoding_do_not_change_the_saved_section(tmp_path):
    """`pecrs export` loads in float32 to save exact vectors: the model it writes keeps the run's
    inference.dtype ("auto"). A decoding given as generate kwargs is kept beside the config."""
    from pecrs.recommender import Recommender

    run, items = make_tiny_run(tmp_path)
    greedy = {"do_sample": False, "num_beams": 1}
    rec = Recommender.from_pretrained(run, catalog=items, device="cpu", cache_dir=False, dtype="float32",
                                      decoding=greedy)
    saved = rec.save_pretrained(tmp_path / "saved")
    meta = json.loads((saved / CONFIG_FILE).read_text())
    assert meta["config"]["inference"]["dtype"] == "auto" and meta["config"]["inference"]["decoding"] == "top_k"
    back = Recommender.from_pretrained(saved, device="cpu", cache_dir=False)
    assert back.decoding == greedy and back.respond(TURNS).text == rec.respond(TURNS).text


def test_recommender_reads_a_checkpoint_saved_before_the_section(tmp_path):
    """Older checkpoints: M_inference under train, a recommender's choices under "recommender"."""
    from pecrs.recommender import Recommender

    run, items = make_tiny_run(tmp_path)
    meta_path = run / "best" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    inference = meta["config"].pop("inference")
    meta["config"]["train"].update(m_inference=inference["m_inference"], eval_batch_size=8, eval_generate=False,
                                   decoding="top_k")
    meta["recommender"] = {"m_inference": 9, "decoding": "greedy"}
    meta_path.write_text(json.dumps(meta))
    rec = Recommender.from_pretrained(run, catalog=items, device="cpu", cache_dir=False)
    assert (rec.m_inference, rec.decoding) == (9, "greedy")


def test_pecrs_evaluate_takes_the_run_settings_and_its_flags(tmp_path, monkeypatch):
    import pecrs.evaluate
    import pecrs.prepare
    from pecrs.cli import main

    run, _ = make_tiny_run(tmp_path)
    meta_path = run / "best" / CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    meta["config"]["inference"].update(m_inference=5, decoding="greedy", batch_size=3, no_repeat_ngram=3)
    meta_path.write_text(json.dumps(meta))
    seen = []
    monkeypatch.setattr(pecrs.prepare, "prepare", lambda config, model=None, **kw: types.SimpleNamespace(
        model=model, store=None, encoder=None, samples={"test": []}, bundle=types.SimpleNamespace(splits={})))
    monkeypatch.setattr(pecrs.evaluate, "evaluate", lambda *a, **kw: seen.append((a[4], kw)) or {})
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--output", str(tmp_path / "a.json")]) == 0
    inference, kwargs = seen[-1]
    assert (inference.m_inference, inference.decoding, inference.batch_size) == (5, "greedy", 3)
    assert inference.no_repeat_ngram == 3
    assert kwargs["max_new_tokens"] == 8  # the run's response length, as serving generates
    written = json.loads((tmp_path / "a.json").read_text())
    assert (written["decoding"], written["no_repeat_ngram"]) == ("greedy", 3)
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--m-inference", "7", "--decoding", "top_k",
                 "--batch-size", "2", "--no-repeat-ngram", "0", "--output", str(tmp_path / "b.json")]) == 0
    inference, _ = seen[-1]
    assert (inference.m_inference, inference.decoding, inference.batch_size) == (7, "top_k", 2)
    assert inference.no_repeat_ngram == 0
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--no-repeat-ngram", "-1"])


def test_pecrs_evaluate_checks_its_output_path_before_evaluating(tmp_path, monkeypatch, capsys):
    import pecrs.evaluate
    from pecrs.cli import main

    run, items = make_tiny_run(tmp_path)
    ran = []
    monkeypatch.setattr(pecrs.evaluate, "evaluate", lambda *a, **kw: ran.append(1) or {})
    for output in (tmp_path, items / "x.json"):   # a folder; a path under a file
        assert main(["evaluate", str(run), "--device", "cpu", "--json", "--output", str(output)]) == 2
        assert f"--output {output}" in capsys.readouterr().err
    assert not ran


def test_pecrs_evaluate_names_a_missing_dataset_before_loading_the_backbone(tmp_path, monkeypatch, capsys):
    """A model's recorded dataset is a path from the working directory where it was trained: run
    from elsewhere, or given a wrong --dataset, the error says which path and suggests --dataset."""
    import pecrs.pretrained
    from pecrs.cli import main

    run, items = make_tiny_run(tmp_path / "world")
    meta = json.loads((run / "best" / CONFIG_FILE).read_text())
    meta["config"]["train"]["dataset"] = "relative/inspired"
    (run / "best" / CONFIG_FILE).write_text(json.dumps(meta))
    monkeypatch.setattr(pecrs.pretrained, "load_pretrained", lambda *a, **kw: pytest.fail("backbone loaded"))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--device", "cpu", "--json"]) == 2
    err = capsys.readouterr().err
    assert "train.dataset) relative/inspired: no such folder" in err and str(tmp_path) in err and "--dataset DIR" in err
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--dataset", "nowhere"]) == 2
    assert "--dataset nowhere: no such folder" in capsys.readouterr().err


def test_pecrs_evaluate_writes_predictions_beside_its_metrics(tmp_path, monkeypatch, capsys):
    """--predictions FILE: one JSON line per sample, whose ranks give back the recall the result
    JSON reports, and a reply for each recommender turn; its path is checked before evaluating."""
    from pecrs.cli import main
    from pecrs.testing import write_jsonl

    run, items = make_tiny_run(tmp_path / "world")
    dialogue = [{"role": "seeker", "text": "I loved [ITEM]", "items": ["3"]},
                {"role": "recommender", "text": "Then [ITEM] or [ITEM]", "items": ["5", "9"]},
                {"role": "seeker", "text": "thanks"},
                {"role": "recommender", "text": "Enjoy"}]
    write_jsonl(items.parent / "test.jsonl", [{"id": f"t{k}", "turns": dialogue} for k in range(2)])
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path))
    out, predictions = tmp_path / "eval.json", tmp_path / "preds" / "test.jsonl"
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--no-ppl", "--output", str(out),
                 "--predictions", str(predictions)]) == 0
    capsys.readouterr()
    result, records = json.loads(out.read_text()), [json.loads(line) for line in predictions.read_text().splitlines()]
    assert "predictions" not in result
    # 2 dialogues x (2 samples of the recommending turn + 1 of the last turn)
    assert [(r["dialogue_id"], r["turn_index"], r["target"]) for r in records] == [
        (d, t, target) for d in ("t0", "t1") for t, target in ((1, "5"), (1, "9"), (3, None))]
    ranks = [r["target_rank"] for r in records if r["target"] is not None]
    assert result["recall@10"] == pytest.approx(sum(1 for k in ranks if k is not None and k <= 10) / len(ranks))
    assert all(len(r["top10"]) == 8 for r in records)     # the run's M_inference is 8: 8 candidates ranked
    assert [("generated" in r, r.get("reference")) for r in records[:3]] == [
        (True, "Then [ITEM] or [ITEM]"), (False, None), (True, "Enjoy")]
    # what `pecrs compare` reads: a model against itself differs by nothing
    assert main(["compare", str(predictions), str(predictions), "--json", "--resamples", "200"]) == 0
    compared = json.loads(capsys.readouterr().out)["metrics"]
    assert compared["recall@10"]["a"] == pytest.approx(result["recall@10"])
    assert compared["f1_item"]["a"] == pytest.approx(result["f1_item"], nan_ok=True)
    assert compared["rouge1"]["a"] == pytest.approx(result["rouge1"])
    assert all(m["difference"] == 0 for m in compared.values())
    for bad in (tmp_path, items / "x.jsonl"):   # a folder; a path under a file: refused up front
        assert main(["evaluate", str(run), "--device", "cpu", "--json", "--predictions", str(bad)]) == 2
        assert f"--predictions {bad}" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--output", str(out), "--predictions", str(out)]) == 2
    assert "is where the result JSON goes" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--protocol", "standardized", "--predictions", str(predictions)]) == 2
    assert "--protocol standardized has none" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("value, words", [(2.5, "expected an integer, got 2.5"), ("x", "expected an integer"),
                                          (-5, ">= 1, got -5"), (True, "got True"), (0, ">= 1, got 0")])
def test_m_inference_is_checked_as_the_config_checks_it(tiny_run, tmp_path, value, words):
    """From Python and from a checkpoint's "recommender" section alike: a bad M_inference is an
    error at load time, not a torch error at the first request (0 once fell back to the default)."""
    from pecrs.recommender import Recommender

    run_dir, items = tiny_run
    with pytest.raises(ConfigError, match=rf"inference\.m_inference: .*{words}"):
        Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False, m_inference=value)
    saved = Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False).save_pretrained(
        tmp_path / "saved")
    meta = json.loads((saved / CONFIG_FILE).read_text())
    meta["recommender"] = {"m_inference": value}
    (saved / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=rf"pecrs_config\.json field 'recommender\.m_inference'.*{words}"):
        Recommender.from_pretrained(saved, device="cpu", cache_dir=False)
