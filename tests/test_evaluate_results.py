"""What `pecrs evaluate` writes and where: the result records what it measured (dataset,
--max-samples, --item-fields); only the run's own dataset, whole split, own settings goes to
eval_<split>.json, the file `pecrs export` quotes as the run's test metrics (and export leaves out
one measured elsewhere); nothing it writes may land on what evaluations read (dataset files,
checkpoint files); a run's relative dataset is found the same way by chat and evaluate, past a run
folder named like it."""
import hashlib
import json
import re
import shutil
import types
from pathlib import Path

import pytest

import pecrs.evaluate
import pecrs.pretrained
import pecrs.prepare
from pecrs.catalog_source import resolve_catalog
from pecrs.run_dataset import DatasetNotFound, dataset_sha1, find_dataset
from pecrs.cli import main
from pecrs.export import card_test_metrics, export, measured_before, measured_elsewhere
from pecrs.pretrained import CONFIG_FILE
from pecrs.testing import make_tiny_run, toy_items, write_jsonl

DIALOGUE = [{"role": "seeker", "text": "I loved [ITEM]", "items": ["3"]},
            {"role": "recommender", "text": "Then [ITEM]", "items": ["5"]}]


def _set_dataset(run: Path, dataset: str) -> None:
    meta = json.loads((run / "best" / CONFIG_FILE).read_text())
    meta["config"]["train"]["dataset"] = dataset
    (run / "best" / CONFIG_FILE).write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """root/books (the dataset, with a test split), root/runs/books (its run, trained from root
    with `--output-dir runs/books`: train.dataset is the relative "books"), a run folder holding
    a metrics.jsonl as training leaves it."""
    root = tmp_path_factory.mktemp("world")
    run, items = make_tiny_run(root)
    write_jsonl(items.parent / "test.jsonl", [{"id": f"t{k}", "turns": DIALOGUE} for k in range(3)])
    items.parent.rename(root / "books")
    (root / "runs").mkdir()
    run.rename(root / "runs" / "books")
    run = root / "runs" / "books"
    _set_dataset(run, "books")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 3.0, "dev_recall@1": 0.1}) + "\n")
    return root, run


@pytest.fixture
def stubbed(monkeypatch):
    """`pecrs evaluate` with the dataset loading and the evaluation planned: what each call was
    given is kept (its dataset, its samples)."""
    calls = []
    monkeypatch.setattr(pecrs.prepare, "prepare", lambda config, model=None, **kw: calls.append(kw) or types.SimpleNamespace(
        model=model, store=None, encoder=None, samples={"test": [1, 2, 3]}, bundle=types.SimpleNamespace(splits={})))
    monkeypatch.setattr(pecrs.evaluate, "evaluate", lambda *a, **kw: calls[-1].update(samples=a[3]) or {"recall@1": 0.5})
    return calls


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. what a result records, and which results are the run's own --------------------------------

def test_results_record_their_dataset_and_only_the_runs_own_is_eval_test(world, stubbed, tmp_path, monkeypatch, capsys):
    root, run = world
    other = tmp_path / "moviesB"                      # another dataset: one item more
    shutil.copytree(root / "books", other)
    with open(other / "items.jsonl", "a") as f:
        f.write(json.dumps({"id": "99", "title": "Another Movie"}) + "\n")
    twin = tmp_path / "twin"                          # a byte copy of the run's dataset: the same dataset
    shutil.copytree(root / "books", twin)
    monkeypatch.chdir(root)
    for name in ("eval_test.json", "eval_moviesB_test.json", "eval_test_first2.json", "eval_test_title-genres.json"):
        (run / name).unlink(missing_ok=True)
    cli = ["evaluate", str(run), "--device", "cpu", "--json"]         # (evaluate is stubbed: no replies run)

    assert main(cli) == 0
    assert f"pecrs: the model's dataset books: {(root / 'books').resolve()}" in capsys.readouterr().err
    own = json.loads((run / "eval_test.json").read_text())
    assert own["dataset"] == str((root / "books").resolve()) and own["dataset_sha1"]
    assert "max_samples" not in own and "item_fields" not in own
    assert Path(stubbed[-1]["dataset"]).resolve() == (root / "books").resolve()
    before = (run / "eval_test.json").read_bytes()

    assert main([*cli, "--dataset", str(other)]) == 0
    assert "eval_moviesB_test.json, not eval_test.json" in capsys.readouterr().err
    measured = json.loads((run / "eval_moviesB_test.json").read_text())
    assert measured["dataset"] == str(other.resolve()) and measured["dataset_sha1"] != own["dataset_sha1"]
    assert main([*cli, "--max-samples", "2"]) == 0
    assert json.loads((run / "eval_test_first2.json").read_text())["max_samples"] == 2 and stubbed[-1]["samples"] == [1, 2]
    assert main([*cli, "--item-fields", "title,genres"]) == 0
    assert json.loads((run / "eval_test_title-genres.json").read_text())["item_fields"] == ["title", "genres"]
    # A recall-only evaluation, another decoding or exclusion: named too, not the run's full figures.
    for argv, name in ((["--no-generate"], "eval_test_no-generate.json"), (["--decoding", "beam"], "eval_test_beam.json"),
                       (["--exclude-mentioned"], "eval_test_exclude-mentioned.json"), (["--m-inference", "5"], "eval_test_m5.json")):
        assert main([*cli, *argv]) == 0 and (run / name).is_file(), argv
    assert (run / "eval_test.json").read_bytes() == before        # none of them replaced the run's own figures

    assert main([*cli, "--dataset", str(twin)]) == 0              # the same files elsewhere: the run's own
    assert json.loads((run / "eval_test.json").read_text())["dataset"] == str(twin.resolve())
    assert main([*cli, "--output", str(tmp_path / "mine.json"), "--dataset", str(other), "--max-samples", "1"]) == 0
    mine = json.loads((tmp_path / "mine.json").read_text())        # --output: any name, the record still says
    assert (mine["dataset"], mine["max_samples"]) == (str(other.resolve()), 1)


def test_inject_target_turns_is_named_recorded_and_refused_without_replies(world, monkeypatch, capsys):
    """`--inject target-turns` (the authors' protocol for Table 3) reaches evaluate(), is written in
    the result and its file name, never as the run's own eval_test.json; without replies it is refused."""
    root, run = world
    monkeypatch.chdir(root)
    given = []
    monkeypatch.setattr(pecrs.prepare, "prepare", lambda config, model=None, **kw: types.SimpleNamespace(
        model=model, store=None, encoder=None, samples={"test": [1, 2]}, bundle=types.SimpleNamespace(splits={})))
    monkeypatch.setattr(pecrs.evaluate, "evaluate", lambda *a, **kw: given.append(kw["inject"]) or {})
    cli = ["evaluate", str(run), "--device", "cpu", "--json"]
    (run / "eval_test.json").unlink(missing_ok=True)
    assert main([*cli, "--inject", "target-turns"]) == 0
    assert "eval_test_inject-target-turns.json, not eval_test.json" in capsys.readouterr().err
    assert json.loads((run / "eval_test_inject-target-turns.json").read_text())["inject"] == "target_turns"
    assert not (run / "eval_test.json").exists()
    assert main(cli) == 0 and json.loads((run / "eval_test.json").read_text())["inject"] == "every_turn"
    assert main([*cli, "--no-generate"]) == 0    # no replies: no protocol recorded
    assert "inject" not in json.loads((run / "eval_test_no-generate.json").read_text())
    given.pop()
    assert given == ["target_turns", "every_turn"]
    assert main([*cli, "--split", "nosuch"]) == 2    # a named error (status 2), as every other
    assert "--split nosuch: " in capsys.readouterr().err and given == ["target_turns", "every_turn"]
    for extra in (["--no-generate"], ["--protocol", "standardized"]):
        assert main([*cli, "--inject", "target-turns", *extra]) == 2
        assert f"--inject chooses the replies an item is injected into; {extra[0]}" in capsys.readouterr().err
    assert given == ["target_turns", "every_turn"]


def test_evaluate_scores_the_constant_reply_from_the_datasets_training_replies(world, tmp_path, monkeypatch):
    """`pecrs evaluate` hands evaluate() the training split's replies (the constant-reply baseline
    is chosen among them) when it generates and the dataset has that split; otherwise none."""
    root, run = world
    monkeypatch.chdir(root)
    given, bundle = [], types.SimpleNamespace(splits={"train": ["dialogues"]})
    monkeypatch.setattr(pecrs.prepare, "prepare", lambda config, model=None, **kw: types.SimpleNamespace(
        model=model, store=None, encoder=None, samples={"test": [1, 2]}, bundle=bundle))
    monkeypatch.setattr(pecrs.evaluate, "training_replies", lambda b, split: [f"a reply of {split}"])
    monkeypatch.setattr(pecrs.evaluate, "evaluate", lambda *a, **kw: given.append(kw["train_replies"]) or {})
    out = ["--output", str(tmp_path / "r.json")]
    assert main(["evaluate", str(run), "--device", "cpu", "--json", *out]) == 0
    assert main(["evaluate", str(run), "--device", "cpu", "--json", "--no-generate", *out]) == 0
    bundle.splits = {}                                          # a dataset without a training split
    assert main(["evaluate", str(run), "--device", "cpu", "--json", *out]) == 0
    assert given == [["a reply of train"], None, None]


def test_default_names(tmp_path, monkeypatch):
    """The run's own: eval_<split>.json (a shipped model's: ./eval_<model>_<split>.json, as before);
    others say what differs, another dataset first as in README's eval_inspired_test.json."""
    from pecrs.cli.results import _result_name, _result_path

    assert _result_name("test", (None, [], [])) == "eval_test.json"
    assert _result_name("dev", ("redial", ["first8", "title-genres"], ["..."])) == "eval_redial_dev_first8_title-genres.json"
    shipped = tmp_path / "models" / "inspired"
    shipped.mkdir(parents=True)
    monkeypatch.setattr(pecrs.pretrained, "MODELS_DIR", shipped.parent)
    monkeypatch.chdir(tmp_path)
    assert _result_path(shipped, _result_name("test", (None, [], []))) == tmp_path / "eval_inspired_test.json"
    assert _result_path(shipped, _result_name("test", ("redial", [], []))) == tmp_path / "eval_inspired_redial_test.json"


def test_export_leaves_out_test_metrics_measured_on_another_dataset(world, tmp_path):
    root, run = world
    ckpt = run / "best"
    twin = tmp_path / "twin"
    shutil.copytree(root / "books", twin)
    (twin / "test.jsonl").write_text("")                                 # same path name, other files
    assert measured_elsewhere({"recall@1": 0.1}, ckpt, "books") is None   # written before results recorded it
    ours = {"dataset": str(root / "books"), "dataset_sha1": dataset_sha1(root / "books")}
    assert measured_elsewhere(ours, ckpt, "books") is None
    edited = {**ours, "dataset_sha1": "x"}                               # the run's folder, its files changed since
    assert "files changed since" in measured_elsewhere(edited, ckpt, "books")
    gpu_copy = {"dataset": "/gpu/.devdata/books", "dataset_sha1": dataset_sha1(root / "books")}
    assert measured_elsewhere(gpu_copy, ckpt, "books") is None           # a byte copy: the same dataset
    foreign = {"dataset": str(twin), "dataset_sha1": "0123"}
    why = measured_elsewhere(foreign, ckpt, "books")
    assert why and str(twin) in why and str(root / "books") in why
    assert "measured on /nowhere" in measured_elsewhere({"dataset": "/nowhere"}, ckpt, "not-there")
    card = "\n".join(card_test_metrics(None, why))
    assert "Not quoted" in card and str(twin) in card and "| recall@1 |" not in card

    (run / "eval_test.json").write_text(json.dumps({"split": "test", "recall@1": 0.9, **foreign}))
    dest = export(run, tmp_path / "shipped", device="cpu")
    card = (dest / "MODEL_CARD.md").read_text()
    assert "Not quoted" in card and str(twin) in card and "90.0%" not in card
    (run / "eval_test.json").unlink()


def test_export_leaves_out_test_metrics_of_an_earlier_best(world, stubbed, tmp_path, monkeypatch):
    """Training went on after `pecrs evaluate RUN` and saved a better best/: the old eval_test.json
    is not the exported checkpoint's metrics. A checkpoint recording no position (an export, the
    GPU flow's adopted best/) is compared with nothing, as before."""
    root, run = world
    monkeypatch.chdir(root)
    meta_path = run / "best" / CONFIG_FILE
    original = meta_path.read_text()
    meta = json.loads(original)
    try:
        meta_path.write_text(json.dumps({**meta, "epoch": 3, "dev": {"recall_mean": 0.1}}))
        assert main(["evaluate", str(run), "--device", "cpu", "--json"]) == 0
        test = json.loads((run / "eval_test.json").read_text())
        assert test["checkpoint_position"] == {"epoch": 3}
        assert measured_before(test, {**meta, "epoch": 3}) is None
        assert measured_before(test, meta) is None                      # exported/adopted: no position to compare
        card = (export(run, tmp_path / "shipped", device="cpu") / "MODEL_CARD.md").read_text()
        assert "50.0%" in card and "Not quoted" not in card             # the same best/: quoted
        assert measured_before({"recall@1": 0.5}, {**meta, "epoch": 7}) is None   # written before results recorded it
        meta_path.write_text(json.dumps({**meta, "epoch": 7, "batch": 40}))      # training went on
        why = measured_before(test, json.loads(meta_path.read_text()))
        assert "epoch 3" in why and "epoch 7, batch 40" in why
        card = (export(run, tmp_path / "shipped", device="cpu") / "MODEL_CARD.md").read_text()
        assert "Not quoted" in card and "epoch 3" in card and "50.0%" not in card
    finally:
        meta_path.write_text(original)
        (run / "eval_test.json").unlink(missing_ok=True)


def test_card_says_when_the_test_figures_cover_part_of_the_split():
    text = "\n".join(card_test_metrics({"split": "test", "recall@1": 0.1, "n_rec_samples": 5, "max_samples": 8,
                                        "item_fields": ["title"]}))
    assert "the first 8 samples of the split" in text and "item fields title" in text


# ---- 2. nothing evaluate writes lands on what it reads ----------------------------------------------

def test_evaluate_refuses_to_write_over_its_inputs(world, tmp_path, monkeypatch, capsys):
    root, run = world
    monkeypatch.setattr(pecrs.pretrained, "load_pretrained", lambda *a, **kw: pytest.fail("work began"))
    monkeypatch.chdir(root)
    data, best = root / "books", run / "best"
    (run / "last").mkdir(exist_ok=True)
    shutil.copytree(best, run / "last", dirs_exist_ok=True)
    before = {p: _digest(p) for p in (data, best, run / "last")}
    metrics = (run / "metrics.jsonl").read_bytes()
    cases = [(["--predictions", "books/test.jsonl", "--output", "books/items.jsonl"], "books/items.jsonl", "dataset books"),
             (["--predictions", "books/test.jsonl"], "books/test.jsonl", "test.jsonl of the dataset books"),
             (["--output", "books/new.jsonl"], "books/new.jsonl", "read as part of the dataset"),
             (["--output", str(data / "official" / "x.tsv")], "x.tsv", "read as part of the dataset"),
             (["--output", str(best / "heads.safetensors")], "heads.safetensors", f"part of the pecrs checkpoint {best}"),
             (["--output", str(best / "items.jsonl")], "items.jsonl", "part of the pecrs checkpoint"),  # would become its catalog
             (["--predictions", str(best / "adapter" / "p.jsonl")], "p.jsonl", "part of the pecrs checkpoint"),
             (["--output", str(run / "last" / CONFIG_FILE)], CONFIG_FILE, f"checkpoint {run / 'last'}"),
             (["--predictions", str(run / "metrics.jsonl")], "metrics.jsonl", "that `pecrs train` keeps in the run folder")]
    for argv, path, why in cases:
        assert main(["evaluate", "runs/books", "--device", "cpu", "--json", "--dataset", "books", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert path in err and why in err and "refused" in err, (argv, err)
    # the standardized protocol too (its --dataset may be the test file itself)
    assert main(["evaluate", "runs/books", "--protocol", "standardized", "--output", "books/items.jsonl"]) == 2
    assert "items.jsonl of the dataset" in capsys.readouterr().err
    assert {p: _digest(p) for p in before} == before and (run / "metrics.jsonl").read_bytes() == metrics
    shutil.rmtree(run / "last")


def test_evaluate_never_writes_into_a_shipped_model(world, tmp_path, monkeypatch, capsys):
    root, run = world
    models = tmp_path / "models"
    shutil.copytree(run / "best", models / "inspired")
    monkeypatch.setattr(pecrs.pretrained, "MODELS_DIR", models)
    monkeypatch.setattr(pecrs.pretrained, "load_pretrained", lambda *a, **kw: pytest.fail("work began"))
    monkeypatch.chdir(root)
    assert main(["evaluate", "inspired", "--device", "cpu", "--output", str(models / "inspired" / "eval.json")]) == 2
    assert "ships with pecrs" in capsys.readouterr().err


# ---- 3. a run's relative dataset, found past a run folder named like it ------------------------------

def test_a_run_folder_named_like_the_dataset_is_not_taken_for_it(world, tmp_path, monkeypatch):
    root, run = world
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert find_dataset("books", run / "best") == root / "books"       # not runs/books, which has metrics.jsonl
    items, report = resolve_catalog(None, run / "best", "books")
    assert list(items) == [it.id for it in toy_items()] and report.source == str(root / "books" / "items.jsonl")


def test_an_exported_model_named_like_the_dataset_is_not_taken_for_it(world, tmp_path, monkeypatch):
    root, run = world
    shutil.copytree(run / "best", tmp_path / "runs" / "books")         # a checkpoint, with a catalog of its own
    shutil.copy(root / "books" / "items.jsonl", tmp_path / "runs" / "books" / "items.jsonl")
    shutil.copytree(root / "books", tmp_path / "books")
    monkeypatch.chdir(tmp_path / "runs")
    assert find_dataset("books", run / "best") == root / "books"


def test_a_missing_dataset_names_every_place_looked(world, tmp_path, monkeypatch, capsys):
    root, run = world
    lone = tmp_path / "lone" / "runs" / "books"
    shutil.copytree(run, lone)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFound) as e:
        find_dataset("books", lone / "best")
    assert [str(p) for p, _ in e.value.looked] == [str(tmp_path / "books"), str(lone / "books"), str(lone),
                                                   *(str(p / "books") for p in lone.parent.parents if p != tmp_path)]
    assert dict(e.value.looked)[lone] == "a folder without a dataset: no items.jsonl, no ReDial release"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{lone} (a folder without a dataset") + ".*catalog=path/to/items.jsonl"):
        resolve_catalog(None, lone / "best", "books")
    monkeypatch.setattr(pecrs.pretrained, "load_pretrained", lambda *a, **kw: pytest.fail("backbone loaded"))
    assert main(["evaluate", str(lone), "--device", "cpu", "--json"]) == 2
    err = capsys.readouterr().err
    assert "train.dataset) books: no such folder" in err and f"{lone} (a folder without a dataset" in err
    assert str(tmp_path / "books") in err and "--dataset DIR" in err


def test_evaluate_finds_the_dataset_where_chat_does(world, stubbed, tmp_path, monkeypatch):
    """From another working directory, `pecrs evaluate RUN` reads the dataset above the run (it
    failed before: only the working directory was tried), and scores it as the run's own."""
    root, run = world
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (run / "eval_test.json").unlink(missing_ok=True)
    assert main(["evaluate", str(run), "--device", "cpu", "--json"]) == 0
    assert Path(stubbed[-1]["dataset"]) == root / "books"
    assert json.loads((run / "eval_test.json").read_text())["dataset"] == str((root / "books").resolve())
