"""Turn what a GPU session brought back into a run folder that `pecrs export` ships from this machine.

    python tools/gpu/adopt_run.py FILES_AT RUN_DIR [--dataset ../shared/datasets/inspired] [--batch-size 32]
    pecrs export RUN_DIR pecrs/models/inspired --device cpu --notes NOTES.md [--no-repeat-ngram 3]

The device tool returns result.json, eval_test.json and shipped.tar (the GPU machine's own
export), not the run folder; or best.tar (the selected checkpoint itself) when the export failed or
the call was salvaged (`train_inspired.sh --salvage`). This rebuilds one: RUN_DIR/best is the exported checkpoint (adapter,
heads, tokenizer, config), RUN_DIR/metrics.jsonl the selected variant's dev curve from result.json,
RUN_DIR/eval_test.json the GPU's test evaluation, RUN_DIR/dev_*.json its dev evaluations for the
ship rule (when the call had time for them), and RUN_DIR/dev_predictions/ their per-sample predictions. So the card that `pecrs export` writes here has
the dev curve and the test metrics, and its item vectors are encoded again on this machine.

Two settings of the GPU run do not fit a shipped model and are replaced (docs/gpu.md):
- train.dataset: the GPU machine read `.devdata/inspired`, a byte copy of `--dataset` that exists
  only on a machine where `--prepare` ran; the shipped config names the shared folder instead.
- inference.batch_size: 128 suits an H200; on a 2-core CPU, ranking 128 contexts x 700 candidates
  at once held 11.8 GiB (`pecrs evaluate`, 2026-11-29), so the shipped default is `--batch-size`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

CHECKPOINT_PARTS = ("adapter", "heads.safetensors", "tokenizer", "pecrs_config.json")


def adopt(files_at: Path, run_dir: Path, dataset: str, batch_size: int | None) -> Path:
    result = json.loads((files_at / "result.json").read_text())
    selected = result.get("selected", {}).get("variant")
    if not selected:
        raise SystemExit(f"{files_at / 'result.json'}: no variant was selected; nothing to adopt")
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: choose a new folder")
    with tempfile.TemporaryDirectory() as tmp:
        kind = _unpack_model(files_at, Path(tmp))
        shipped = Path(tmp) / kind
        if kind == "shipped":
            _check_data(shipped, Path(dataset))
        else:     # a checkpoint holds no catalog: the test evaluation's record of its data, when there is one
            _check_recorded_data(files_at / "eval_test.json", Path(dataset))
        (run_dir / "best").mkdir(parents=True)
        for name in CHECKPOINT_PARTS:
            source = shipped / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, run_dir / "best" / name)
    config_path = run_dir / "best" / "pecrs_config.json"
    meta = json.loads(config_path.read_text())
    gpu_export = meta.pop("export", {})
    meta["config"]["train"]["dataset"] = dataset
    if batch_size:
        meta["config"]["inference"]["batch_size"] = batch_size
    config_path.write_text(json.dumps(meta, indent=2) + "\n")
    curve = result["variants"][selected].get("dev_curve", [])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    for path in [files_at / "eval_test.json", *sorted(files_at.glob("dev_*.json"))]:   # the GPU's evaluations
        if path.is_file():
            shutil.copy2(path, run_dir / path.name)
    if (files_at / "dev_predictions.tar").is_file():     # their per-sample predictions: RUN_DIR/dev_predictions/
        with tarfile.open(files_at / "dev_predictions.tar") as tar:
            tar.extractall(run_dir, filter="data")
    shutil.copy2(files_at / "result.json", run_dir / "result.json")
    print(json.dumps({"run_dir": str(run_dir), "variant": selected, "epochs": len(curve),
                      "gpu_export": gpu_export, "dataset": dataset,
                      "inference_batch_size": meta["config"]["inference"]["batch_size"]}))
    return run_dir


def _check_data(shipped: Path, dataset: Path) -> None:
    """The catalog the GPU run shipped must be the dataset's, item for item: the shipped config
    will name that dataset as the one the model trained on."""
    if not (dataset / "items.jsonl").is_file():
        raise SystemExit(f"{dataset}: no items.jsonl; pass --dataset, the folder the GPU run's data was copied from")
    def rows(path: Path) -> list:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows(shipped / "items.jsonl") != rows(dataset / "items.jsonl"):
        raise SystemExit(f"{dataset / 'items.jsonl'} differs from the catalog the GPU run shipped: "
                         "not the dataset it trained on")


def _unpack_model(files_at: Path, into: Path) -> str:
    """Unpack the model that came back into `into`: the export (shipped.tar, or shipped-1.tar, ...
    when split), else the selected checkpoint (best.tar, ...); returns which ("shipped" or "best").
    An export whose tars do not read whole gives way to the checkpoint when it came back too."""
    for kind in ("shipped", "best"):
        tars = sorted(files_at.glob(f"{kind}*.tar"))
        if not tars:
            continue
        try:
            for path in tars:
                with tarfile.open(path) as tar:
                    tar.extractall(into, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            print(f"warning: {kind} tars do not read whole ({e}); trying the next", file=sys.stderr)
            shutil.rmtree(into / kind, ignore_errors=True)
            continue
        if (into / kind / "pecrs_config.json").is_file():
            return kind
    raise SystemExit(f"{files_at}: no whole shipped.tar or best.tar (no model came back; see result.json "
                     "'export' and 'selected')")


def _check_recorded_data(eval_test: Path, dataset: Path) -> None:
    """A checkpoint without its catalog (best.tar): the data the GPU's test evaluation recorded
    (a hash of the dataset's files) must be `dataset`'s; without that record, a warning."""
    recorded = json.loads(eval_test.read_text()) if eval_test.is_file() else {}
    if not recorded.get("dataset_sha1"):
        print(f"warning: {eval_test} records no dataset hash: cannot check that {dataset} is the data "
              "the GPU run trained on", file=sys.stderr)
        return
    from pecrs.run_dataset import matches_record

    if not matches_record(recorded, dataset):
        raise SystemExit(f"{dataset} differs from the data the GPU run evaluated ({eval_test}): "
                         "not the dataset it trained on")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files_at", type=Path, help="the folder the device tool put the files in")
    parser.add_argument("run_dir", type=Path, help="the run folder to create")
    parser.add_argument("--dataset", default="../shared/datasets/inspired")
    parser.add_argument("--batch-size", type=int, default=32, help="the shipped inference.batch_size (0: keep)")
    args = parser.parse_args(argv)
    adopt(args.files_at, args.run_dir, args.dataset, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
