"""The benchmark scripts still run and print what docs/performance.md reads from them (tiny
backbones, a couple of repeats: a check against bit-rot, not a measurement)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO


def run_benchmark(script: str, *args: str, tmp_path) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args, "--threads", "1",
                           "--json-out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("SUMMARY ")
    return json.loads(out.read_text())


def test_latency_reports_percentiles_and_the_attention_comparison(shared_datasets, tmp_path):
    result = run_benchmark("latency", "--backbone", "tiny-llama", "--quick", "--catalogs", "inspired",
                           "--requests", "3", "--warmup", "1", tmp_path=tmp_path)
    entry = result["catalogs"]["inspired"]
    assert entry["items"] > 1000
    for mode in ("recall_only", "recall_rerank"):
        assert 0 < entry[mode]["p50"] <= entry[mode]["p95"]
    breakdown = entry["breakdown_median_s"]
    assert {"context_pass", "search", "rerank", "rerank_stock_attention"} <= set(breakdown)
    assert breakdown["rerank_speedup_from_candidate_attention"] > 0
    assert result["settings"]["m_inference"] == 700


def test_train_step_prints_the_ratio(shared_datasets, tmp_path):
    result = run_benchmark("train_step", "--backbone", "tiny-llama", "--quick", "--repeats", "2",
                           "--m-train", "8", "--context", "32", "--response", "8", tmp_path=tmp_path)
    steps = result["seconds_per_step"]
    expected = steps["pecrs"]["median"] / steps["plain_lora_lm"]["median"]
    assert result["ratio_pecrs_over_plain"] == pytest.approx(expected, rel=0.01)
    assert result["target_ratio"] == 1.5
    assert result["settings"]["pecrs_tokens_per_row"] > result["settings"]["plain_tokens_per_row"]


def test_generation_reports_tokens_per_second(shared_datasets, tmp_path):
    result = run_benchmark("generation", "--backbone", "tiny-llama", "--quick", "--max-new-tokens", "4",
                           "--strategies", "greedy", "top_k_50", tmp_path=tmp_path)
    rows = result["strategies"]
    assert set(rows) == {"greedy", "top_k_50"}
    assert all(row["tokens_per_s"] > 0 and row["tokens"] == [4] for row in rows.values())



def test_gpu_epoch_runs_on_cpu_and_extrapolates(shared_datasets, tmp_path):
    """The GPU-session benchmark must not break unseen: device minutes are too scarce to debug it there."""
    result = run_benchmark("gpu_epoch", "--backbone", "tiny-llama", "--quick", "--max-train-samples", "40",
                           tmp_path=tmp_path)
    row = result["per_batch_size"]["2"]
    assert row["s_per_step"] > 0 and row["steps_per_epoch"] == 20
    assert row["epoch_s_extrapolated"] == pytest.approx(20 * row["s_per_step"], abs=0.06)   # rounded to 0.1 s
    expected = result["catalog_cache_s"] + 20 * (row["epoch_s_extrapolated"] + result["dev_eval_s"])
    assert result["run_s_extrapolated"] == pytest.approx(expected, abs=0.2)
    assert result["settings"]["train_samples"] == 40 and result["device"] == "cpu"
