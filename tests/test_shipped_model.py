"""The shipped-model path: `pecrs export` writes a small float16 model with its catalog's vectors,
and a model under pecrs/models/NAME loads by name with nothing re-encoded."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pecrs.pretrained as pretrained
from pecrs.cli import main
from pecrs.recommender import Recommender
from pecrs.testing import make_tiny_run
from pecrs.vector_cache import VECTORS_FILE

DIALOGUE = [{"role": "seeker", "text": "Any film like Alien?"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    run, _ = make_tiny_run(root)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 3.2, "dev_recall@1": 0.1,
                                                   "dev_recall@10": 0.3, "dev_recall@50": 0.6}) + "\n"
                                       + json.dumps({"stopped": "max_train_minutes", "epoch": 2, "batch": 7,
                                                     "seconds": 600.0, "train_loss": 2.5, "dev_recall@1": 0.2,
                                                     "dev_recall@10": 0.4, "dev_recall@50": 0.7}) + "\n")
    (run / "eval_test.json").write_text(json.dumps({"split": "test", "recall@1": 0.05, "rouge1": 0.3}))
    models = root / "models"
    (root / "notes.md").write_text("Trained on a laptop, for a demo.\n")
    assert main(["export", str(run), str(models / "inspired"), "--notes", str(root / "notes.md"),
                 "--no-repeat-ngram", "3", "--decoding", "beam"]) == 0
    return run, models / "inspired"


def test_export_is_half_precision_with_vectors_and_a_card(exported):
    run, shipped = exported
    heads = load_file(shipped / "heads.safetensors")
    adapter = load_file(next((shipped / "adapter").glob("*.safetensors")))
    assert heads and all(v.dtype == torch.float16 for v in heads.values())
    assert adapter and all(v.dtype == torch.float16 for v in adapter.values())
    assert load_file(shipped / VECTORS_FILE)["vectors"].dtype == torch.float16
    card = (shipped / "MODEL_CARD.md").read_text()
    for needed in ("tiny-llama", "Dev curve", "| 1 | 3.200 | 10.0 | 30.0 | 60.0 |", "| 2 (stopped at batch 7) | 2.500 | 20.0 | 40.0 | 70.0 |",
                   "| recall@1 | 5.0% |", "| rouge1 | 0.3 |",
                   "Limitations", "git", "item_vectors.safetensors",
                   "## About this model\n\nTrained on a laptop, for a demo.",
                   "stopped early (max_train_minutes) at epoch 2, batch 7, after 10 minutes",
                   "no 3-gram twice in a reply", "decoding `beam`"):
        assert needed in card, needed
    meta = json.loads((shipped / "pecrs_config.json").read_text())
    assert meta["export"]["source"].endswith("best") and meta["config"]["inference"]["no_repeat_ngram"] == 3
    assert meta["config"]["inference"]["decoding"] == "beam"


def test_export_never_replaces_its_run_or_a_folder_that_is_not_a_model(exported, capsys):
    run, shipped = exported
    stray = run.parent / "notes.md"
    shutil.copytree(run / "best", run / "last")                     # a training checkpoint, not an export
    (run.parent / "link").symlink_to(shipped, target_is_directory=True)
    before = sorted(p.relative_to(run.parent) for p in run.parent.rglob("*"))
    for destination, message in ((run, "being saved from"), (run / "best", "being saved from"),
                                 (run.parent, "being saved from"), (run.parent / "data", "is not a pecrs checkpoint"),
                                 (stray, "is a file"), (run / "last", "is a training checkpoint"),
                                 (run.parent / "link", "is a symbolic link")):
        assert main(["export", str(run), str(destination)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.relative_to(run.parent) for p in run.parent.rglob("*")) == before   # nothing lost
    assert main(["export", str(run), str(shipped), "--no-repeat-ngram", "3"]) == 0     # an export: replaced
    # A Recommender's save: export and save_pretrained follow one rule, and both may replace it.
    saved = Recommender.from_pretrained(shipped, device="cpu").save_pretrained(run.parent / "saved")
    assert main(["export", str(run), str(saved)]) == 0
    shutil.rmtree(run / "last")
    (run.parent / "link").unlink()


def test_saving_never_deletes_its_source_through_the_tmp_and_old_siblings(tmp_path):
    run, _ = make_tiny_run(tmp_path)
    old = run / "m.old"
    shutil.copytree(run / "best", old)
    with pytest.raises(ValueError, match="being saved from"):
        pretrained.check_replaceable(run / "m", sources=(old,))
    assert (old / "pecrs_config.json").is_file()


def test_the_card_quotes_replies_and_genres_when_evaluated():
    from pecrs.export import card_test_metrics

    full = {"split": "test", "recall@1": 0.097, "rouge1": 13.2, "rouge1_paper_protocol": 25.87,
            "n_rec_samples": 279, "n_gen_samples": 960,
            "decoding": "top_k", "no_repeat_ngram": 3,
            "genres": {"accuracy": 0.328, "wrong_genre_rate": 0.32, "random_genre_rate": 0.185}}
    text = "\n".join(card_test_metrics(full))
    assert "| recall@1 | 9.7% |" in text and "| rouge1 | 13.2 |" in text
    assert "| rouge1_paper_protocol | 25.87 |" in text          # the paper's way, beside ours
    assert "(279 samples with a target, 960 replies generated, M_inference ?, decoding `top_k`, no_repeat_ngram 3)" in text
    excluded = "\n".join(card_test_metrics({**full, "m_inference": 700, "exclude_mentioned": True}))
    assert "M_inference 700, the items a conversation mentions excluded, decoding" in excluded
    assert "first genre in 32.8% of samples; among wrong top-1 items 32.0%, against 18.5%" in text
    recall_only = "\n".join(card_test_metrics({"split": "test", "recall@1": 0.1, "n_rec_samples": 279}))
    assert "replies generated" not in recall_only and "Genre" not in recall_only
    assert "Not evaluated" in "\n".join(card_test_metrics(None))


def test_the_card_tells_a_resumed_run_from_a_stopped_one(exported):
    from pecrs.export import model_card

    _, shipped = exported
    stop = {"stopped": "max_train_minutes", "epoch": 1, "batch": 357, "seconds": 4200.0, "train_loss": 10.2,
            "dev_recall@1": 0.09, "dev_recall@10": 0.18, "dev_recall@50": 0.27}
    finish = {"epoch": 1, "global_step": 574, "train_loss": 9.8, "train_from_batch": 358,
              "dev_recall@1": 0.08, "dev_recall@10": 0.22, "dev_recall@50": 0.28}
    meta = pretrained.read_meta(shipped)
    stopped = model_card("m", meta, [stop], None, shipped)
    resumed = model_card("m", meta, [stop, finish], None, shipped)
    assert "Training stopped early (max_train_minutes) at epoch 1, batch 357, after 70 minutes." in stopped
    assert "stopped early" not in resumed and "then resumed from that checkpoint" in resumed
    assert "| 1 (resumed at batch 358) | 9.800 | 8.0 | 22.0 | 28.0 |" in resumed
    diverged = {**finish, "train_loss": None}       # metrics.jsonl writes a NaN loss as null
    assert "| 1 (resumed at batch 358) | n/a | 8.0 |" in model_card("m", meta, [stop, diverged], None, shipped)
    meta["config"]["train"]["epochs"] = 2
    assert "- Training: 2 epochs planned," in model_card("m", meta, [stop], None, shipped)
    meta["config"]["train"]["epochs"] = 1
    assert "- Training: 1 epoch planned," in model_card("m", meta, [stop], None, shipped)


def test_shipped_model_loads_by_name_without_encoding(exported, monkeypatch):
    run, shipped = exported
    monkeypatch.setattr(pretrained, "MODELS_DIR", shipped.parent)
    assert pretrained.checkpoint_dir("inspired") == shipped
    from pecrs.catalog import ItemStore

    def no_encoding(*args, **kwargs):
        raise AssertionError("the shipped catalog must not be re-encoded")

    monkeypatch.setattr(ItemStore, "all_vectors", no_encoding)
    rec = Recommender.from_pretrained("inspired", device="cpu")
    assert rec.report.vectors_from_cache and rec.report.cache_path.endswith(VECTORS_FILE)
    assert "vectors saved with the model" in rec.report.summary()       # the model's own file, not a cache
    monkeypatch.undo()
    original = Recommender.from_pretrained(run, device="cpu", cache_dir=False)
    # float16 weights and vectors rank as the float32 run does
    a = [r.item.id for r in rec.recommend(DIALOGUE, k=5)]
    b = [r.item.id for r in original.recommend(DIALOGUE, k=5)]
    assert a[:3] == b[:3]
    assert torch.allclose(rec.vectors, original.vectors, atol=2e-2, rtol=1e-2)
    # another catalog is encoded as usual (the shipped vectors are that catalog's only)
    from pecrs.vector_cache import load_saved_vectors
    from pecrs.data import Item
    assert load_saved_vectors(shipped, [Item("x", "X"), Item("y", "Y")], rec.config.model, rec.vectors.shape[1]) is None


def test_chat_without_a_run_folder_uses_the_shipped_default(exported, monkeypatch, capsys):
    run, shipped = exported
    monkeypatch.setattr(pretrained, "MODELS_DIR", shipped.parent)
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("I liked Alien\n/quit\n"))
    assert main(["chat", "--device", "cpu", "--seed", "0"]) == 0
    err = capsys.readouterr().err
    assert VECTORS_FILE in err  # the summary says the vectors came with the model


def test_no_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "MODELS_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no trained 'inspired' model ships"):
        pretrained.checkpoint_dir("inspired")
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        pretrained.checkpoint_dir(tmp_path / "missing-run")


def test_evaluating_a_shipped_model_writes_outside_the_package(exported, monkeypatch):
    from pecrs.cli.results import _result_path

    run, shipped = exported
    monkeypatch.setattr(pretrained, "MODELS_DIR", shipped.parent)
    assert _result_path(shipped, "eval_test.json").parent != shipped.parent
    assert _result_path(run / "best", "eval_test.json") == run / "eval_test.json"


def test_evaluating_last_does_not_overwrite_what_export_reads_for_best(exported):
    """`pecrs export RUN` quotes RUN/eval_test.json as best/'s test metrics: an evaluation of
    RUN/last (or of any checkpoint folder) is written into that folder instead."""
    from pecrs.cli.results import _result_path

    run, shipped = exported
    assert _result_path(run / "last", "eval_test.json") == run / "last" / "eval_test.json"
    assert _result_path(shipped, "eval_dev.json") == shipped / "eval_dev.json"   # a save_pretrained folder


def test_a_stray_folder_does_not_hide_the_shipped_model(exported, monkeypatch, tmp_path):
    run, shipped = exported
    monkeypatch.setattr(pretrained, "MODELS_DIR", shipped.parent)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inspired").mkdir()
    assert pretrained.checkpoint_dir("inspired") == shipped


def _with_test_split(data):
    """A test.jsonl beside the tiny run's catalog (toy item ids "0".."11")."""
    turns = [{"role": "seeker", "text": "I want a funny movie"},
             {"role": "recommender", "text": "Try [ITEM]", "items": ["3"]},
             {"role": "seeker", "text": "Seen it, another?"},
             {"role": "recommender", "text": "Then [ITEM]", "items": ["5"]}]
    (data / "test.jsonl").write_text(json.dumps({"id": "d1", "turns": turns}) + "\n")
    return data


def test_evaluating_a_shipped_model_scores_its_shipped_vectors(exported, monkeypatch, tmp_path, capsys):
    """`pecrs evaluate inspired` reads the vectors the model ships with (what serving uses) instead of
    encoding the catalog; a catalog edited since, or other item fields, are encoded as usual."""
    from pecrs.catalog import ItemStore
    from pecrs.pretrained import load_pretrained
    from pecrs.prepare import prepare

    run, shipped = exported
    data = _with_test_split(Path(shutil.copytree(run.parent / "data", tmp_path / "data")))
    monkeypatch.setattr(pretrained, "MODELS_DIR", shipped.parent)
    monkeypatch.chdir(tmp_path)
    encoded = []
    original = ItemStore.cache_base_states
    monkeypatch.setattr(ItemStore, "cache_base_states", lambda self, *a, **k: encoded.append(1) or original(self, *a, **k))
    assert main(["evaluate", "inspired", "--dataset", str(data), "--no-generate", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert encoded == [] and result["n_rec_samples"] == 2
    # Every result says where it was measured: the CPU's model name, not just "cpu".
    from pecrs.precision import cpu_model
    assert result["measured"]["hardware"]["cpu"] == cpu_model() and result["measured"]["date"]
    # The store hands out exactly the shipped vectors.
    model, config = load_pretrained(shipped)
    setup = prepare(config, model=model, dataset=str(data), saved_vectors_from=shipped)
    assert setup.store.mode == "saved" and encoded == []
    assert torch.equal(setup.store.all_vectors(model), load_file(shipped / VECTORS_FILE)["vectors"].float())
    model.backbone_fingerprint = "0123456789abcdef"     # as if loaded onto other base weights
    assert prepare(config, model=model, dataset=str(data), saved_vectors_from=shipped).store.mode == "cached"
    assert encoded == [1]
    encoded.clear()
    # Other item fields (Table 6), or a catalog whose text changed: encoded, never the stale vectors.
    assert main(["evaluate", "inspired", "--dataset", str(data), "--no-generate", "--json", "--device", "cpu",
                 "--item-fields", "title"]) == 0
    assert encoded == [1]
    lines = (data / "items.jsonl").read_text().splitlines()
    edited = json.loads(lines[0])
    edited["title"] += " (director's cut)"
    (data / "items.jsonl").write_text("\n".join([json.dumps(edited), *lines[1:]]) + "\n")
    setup = prepare(config, model=model, dataset=str(data), saved_vectors_from=shipped)
    assert setup.store.mode == "cached" and encoded == [1, 1]


def test_a_damaged_or_foreign_checkpoint_names_its_file(tmp_path):
    from safetensors.torch import save_file

    run, _ = make_tiny_run(tmp_path)
    best = run / "best"
    heads = load_file(best / "heads.safetensors")
    foreign = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.startswith("g.") else v for k, v in heads.items()}
    save_file(foreign, best / "heads.safetensors")                # another model's heads
    with pytest.raises(ValueError, match=r"heads\.safetensors: head weights cannot be loaded .*size mismatch"):
        pretrained.load_pretrained(best)
    (best / "heads.safetensors").write_bytes(b"\x08\x00")          # a truncated file
    with pytest.raises(ValueError, match=r"heads\.safetensors: head weights cannot be loaded"):
        pretrained.load_pretrained(best)
    save_file({k: v.to(torch.int8) for k, v in heads.items()}, best / "heads.safetensors")   # silently cast before
    with pytest.raises(ValueError, match=r"heads\.safetensors: head weights must be floating point"):
        pretrained.load_pretrained(best)
    save_file(heads, best / "heads.safetensors")
    adapter = best / "adapter" / "adapter_model.safetensors"
    lora = load_file(adapter)
    save_file({k: v for k, v in lora.items() if "lora_B" not in k}, adapter)   # loaded silently before
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: adapter weights do not fit .* missing"):
        pretrained.load_pretrained(best)
    save_file({}, adapter)                                          # a raw KeyError from peft before
    with pytest.raises(ValueError, match=r"adapter weights do not fit this model .*0 unexpected"):
        pretrained.load_pretrained(best)
    adapter.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: adapter weights cannot be loaded"):
        pretrained.load_pretrained(best)
    adapter.unlink()   # peft would read "<folder>/adapter" as a Hub repository id and go online
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: missing; .* not a complete pecrs checkpoint"):
        pretrained.load_pretrained(best)
    meta = json.loads((best / "pecrs_config.json").read_text())
    for key, bad in (("model_type", None), ("recommender", [])):   # a raw KeyError / AttributeError before
        (best / "pecrs_config.json").write_text(json.dumps({**meta, key: bad}))
        with pytest.raises(ValueError, match=rf"pecrs_config\.json: '{key}' is .*the checkpoint is damaged"):
            pretrained.read_meta(best)
    (best / "pecrs_config.json").write_text(json.dumps(meta))
    (best / "tokenizer" / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not readable JSON"):
        pretrained.load_pretrained(best)
    (best / "pecrs_config.json").write_text('{"config": ')
    with pytest.raises(ValueError, match=r"pecrs_config\.json: not a readable pecrs config"):
        pretrained.load_pretrained(best)


def test_another_base_of_the_same_shapes_is_named_and_its_saved_vectors_not_used(exported, tmp_path, caplog):
    """A checkpoint records a fingerprint of the base weights it trained on. Loaded onto another LM
    of the same architecture and shapes (a base model for its instruct tuning, a changed folder), it
    loads with a warning, and the item vectors saved with it, encoded by the other base, are not used."""
    from pecrs.backbone import backbone_fingerprint, load_backbone
    from pecrs.vector_cache import catalog_cache_key

    _, shipped = exported
    recorded = json.loads((shipped / "pecrs_config.json").read_text())["backbone_fingerprint"]
    lm, tokenizer = load_backbone("tiny-llama")
    assert recorded == backbone_fingerprint(lm) == backbone_fingerprint(load_backbone("tiny-llama", torch.bfloat16)[0])
    with torch.no_grad():
        lm.model.layers[1].mlp.down_proj.weight[0, 0] += 0.05      # one weight of 60k: another base
    assert backbone_fingerprint(lm) != recorded
    other = tmp_path / "other-base"
    lm.save_pretrained(other)
    tokenizer.save_pretrained(other)

    with caplog.at_level("WARNING", logger="pecrs.pretrained"):
        same = Recommender.from_pretrained(shipped, cache_dir=False)
    assert same.report.vectors_from_cache and "other base weights" not in caplog.text
    with caplog.at_level("WARNING", logger="pecrs.pretrained"):
        moved = Recommender.from_pretrained(shipped, backbone=str(other), cache_dir=False)
    assert f"backbone fingerprint {recorded}" in caplog.text and "trained on other base weights" in caplog.text
    assert not moved.report.vectors_from_cache and not torch.allclose(moved.vectors, same.vectors)
    # The disk cache tells them apart too: the checkpoint's files are the same under both bases.
    key = [catalog_cache_key(shipped, same.items.values(), same.config.model, backbone=f)
           for f in (recorded, backbone_fingerprint(lm))]
    assert key[0] != key[1]


def test_export_notes_that_cannot_be_read_are_a_named_error(exported, tmp_path, capsys):
    run, _ = exported
    missing = tmp_path / "missing.md"
    assert main(["export", str(run), str(tmp_path / "out"), "--notes", str(missing)]) == 2
    assert f"pecrs: error: --notes {missing}: " in capsys.readouterr().err and not (tmp_path / "out").exists()
