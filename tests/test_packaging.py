"""What an installed pecrs carries: its configs (found by name) and any model under pecrs/models."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pecrs.config import RunConfig, packaged_configs

REPO = Path(__file__).resolve().parents[1]


def test_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"inspired", "redial", "tiny", "inspired-gpu", "inspired-cpu"} <= set(packaged_configs())
    assert RunConfig.load("tiny").model.backbone == "tiny-llama"
    assert RunConfig.load("inspired.yaml", ["train.epochs=3"]).train.epochs == 3
    (tmp_path / "tiny.yaml").write_text("model:\n  backbone: tiny-gpt2\n")
    assert RunConfig.load("tiny.yaml").model.backbone == "tiny-gpt2"   # a file here wins over the packaged one
    # the README's commands, run outside a checkout (no configs/ folder here)
    assert RunConfig.load("configs/inspired-gpu.yaml").train.batch_size == RunConfig.load("inspired-gpu").train.batch_size
    with pytest.raises(FileNotFoundError, match="packaged configs: .*inspired"):
        RunConfig.load("elsewhere/inspired.yaml")


def test_version_is_printed(capsys):
    from pecrs import __version__
    from pecrs.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"pecrs {__version__}"


def test_wheel_contains_configs_and_shipped_models(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "pecrs", src / "pecrs", ignore=shutil.ignore_patterns("__pycache__", "models"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # A real export (whatever files `pecrs export` writes must all reach the wheel).
    from pecrs.cli import main
    from pecrs.testing import make_tiny_run

    run, _ = make_tiny_run(tmp_path / "run")
    model = src / "pecrs" / "models" / "demo"
    assert main(["export", str(run), str(model)]) == 0
    exported = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    assert {"heads.safetensors", "item_vectors.safetensors", "tokenizer/tokenizer.json"} <= set(exported)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("pecrs-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("inspired", "redial", "tiny", "inspired-gpu"):
        assert f"pecrs/configs/{config}.yaml" in names
    for rel in exported:
        assert f"pecrs/models/demo/{rel}" in names, rel
    assert "pecrs/web/index.html" in names or any(n.startswith("pecrs/web/") for n in names)
    # Every module of every subpackage (cli/, loaders/, metrics/, ...), so an installed pecrs runs.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "pecrs").rglob("*.py") if "models" not in p.parts}
    assert modules <= names, sorted(modules - names)
