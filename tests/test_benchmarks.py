"""The benchmark scripts still run and print what docs/performance.md reads from them (tiny
backbones, a couple of repeats: a check against bit-rot, not a measurement)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_latency_reports_percentiles_and_the_attention_comparison(shared_datasets, tmp_path, run_benchmark):
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


def test_train_step_prints_the_ratio(shared_datasets, tmp_path, run_benchmark):
    result = run_benchmark("train_step", "--backbone", "tiny-llama", "--quick", "--repeats", "2",
                           "--m-train", "8", "--context", "32", "--response", "8", tmp_path=tmp_path)
    steps = result["seconds_per_step"]
    expected = steps["pecrs"]["median"] / steps["plain_lora_lm"]["median"]
    assert result["ratio_pecrs_over_plain"] == pytest.approx(expected, rel=0.01)
    assert result["target_ratio"] == 1.5
    assert result["settings"]["pecrs_tokens_per_row"] > result["settings"]["plain_tokens_per_row"]


def test_generation_reports_tokens_per_second(shared_datasets, tmp_path, run_benchmark):
    result = run_benchmark("generation", "--backbone", "tiny-llama", "--quick", "--max-new-tokens", "4",
                           "--strategies", "greedy", "top_k_50", tmp_path=tmp_path)
    rows = result["strategies"]
    assert set(rows) == {"greedy", "top_k_50"}
    assert all(row["tokens_per_s"] > 0 and row["tokens"] == [4] for row in rows.values())



def test_first_recommendation_times_a_fresh_process_of_an_exported_model(tmp_path, run_benchmark):
    from pecrs.cli import main
    from pecrs.testing import make_tiny_run

    run, _ = make_tiny_run(tmp_path / "run")
    assert main(["export", str(run), str(tmp_path / "model")]) == 0
    result = run_benchmark("first_recommendation", "--model", str(tmp_path / "model"), "--quick", tmp_path=tmp_path)
    (start,) = result["runs"]
    assert start["vectors_from_cache"] and len(start["recommended"]) == 5   # shipped vectors, nothing encoded
    assert 0 < start["first_recommendation_s"] < start["first_reply_s"]
    phases = start["import_s"] + start["load_s"] + start["recommend_s"]
    assert phases < start["first_recommendation_s"]   # the wall clock also holds interpreter start-up
    assert result["first_recommendation_s"]["median"] == start["first_recommendation_s"]
    assert result["target_s"] == 30.0


def test_gpu_epoch_runs_on_cpu_and_extrapolates(shared_datasets, tmp_path, run_benchmark):
    """The GPU-session benchmark must not break unseen: device minutes are too scarce to debug it there."""
    result = run_benchmark("gpu_epoch", "--backbone", "tiny-llama", "--quick", "--max-train-samples", "40",
                           tmp_path=tmp_path)
    row = result["per_batch_size"]["2"]
    assert row["s_per_step"] > 0 and row["steps_per_epoch"] == 20
    assert row["epoch_s_extrapolated"] == pytest.approx(20 * row["s_per_step"], abs=0.06)   # rounded to 0.1 s
    expected = result["catalog_cache_s"] + 20 * (row["epoch_s_extrapolated"] + result["dev_eval_s"])
    assert result["run_s_extrapolated"] == pytest.approx(expected, abs=0.2)
    assert result["settings"]["train_samples"] == 40 and result["device"] == "cpu"


def test_gpu_probe_quick_runs_the_train_step_and_reports_each_combination(shared_datasets, tmp_path):
    """benchmarks/gpu_probe.py --quick on the CPU: eager and compile (dynamo's "eager" backend, no
    code generation) x two batch sizes through pecrs.step, the printed lines and the JSON fields
    that tools/gpu/train_inspired.py plans its schedule from."""
    out = tmp_path / "gpu_probe.json"        # written there because OUT is set (the device tool's folder)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_probe.py"), "train.max_train_samples=24",
                           "train.m_train=8", "model.context_max_tokens=64", "model.response_max_tokens=12",
                           "--config", str(REPO / "configs" / "tiny.yaml"), "--quick", "--modes", "eager", "compile",
                           "--compile-backend", "eager", "--batch-sizes", "2", "4", "--compile-guess-s", "1",
                           "--dev-eval", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("SUMMARY ")
    result = json.loads(out.read_text())
    combos = {(c["mode"], c["batch_size"]): c for c in result["combos"]}
    assert set(combos) == {("eager", 2), ("eager", 4), ("compile", 2), ("compile", 4)}
    # config batch (tiny: 4) first in eager and compiled order
    assert [(c["mode"], c["batch_size"]) for c in result["combos"]][:2] == [("eager", 4), ("compile", 4)]
    for (mode, bs), c in combos.items():
        assert c["status"] == "ok" and c["ran_as"] == mode and c["fell_back"] is False, c
        assert c["ms_per_step"] > 0 and c["samples_per_s"] == pytest.approx(bs * 1000 / c["ms_per_step"], rel=0.02)
        assert c["steps"] >= 2 and c["first_step_s"] > 0 and c["peak_memory_gb"] is None   # no GPU here
        assert c["steps_per_epoch"] == 24 // bs and c["graph_breaks"] == 0
        printed = [x for x in lines if x.startswith(f"probe {mode:>10} batch {bs:>3}:")]
        assert len(printed) == 1 and "ms/step" in printed[0] and "samples/s" in printed[0]
    chosen = result["chosen"]
    best = max(combos.values(), key=lambda c: c["samples_per_s"])
    assert chosen["samples_per_s"] >= 0.9 * best["samples_per_s"]
    assert any(x.startswith(f"chosen: {chosen['mode']} at batch {chosen['batch_size']}") for x in lines)
    s = result["settings"]
    assert s["static_shapes"] is True and s["compile_backend"] == "eager" and s["frozen_dtype"] == "float32"
    assert result["setup_s"] > 0 and result["dev_eval_s"] > 0 and result["device"] == "cpu"


def test_gpu_probe_choice_and_budget_rules(monkeypatch):
    """The probe's choice: the fastest combination that ran in its own mode (fallbacks never
    count), a smaller batch within 10% of it preferred."""
    import importlib.util

    # benchmarks are scripts, not a package: gpu_probe.py is loaded from its path, and its own
    # `import _common` finds its neighbour as it does when run, for this test only
    spec = importlib.util.spec_from_file_location("gpu_probe", REPO / "benchmarks" / "gpu_probe.py")
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    def row(mode, bs, sps, status="ok"):
        return {"mode": mode, "batch_size": bs, "status": status, "samples_per_s": sps, "ms_per_step": bs / sps * 1e3,
                "epoch_s_estimate": 1.0, "first_step_s": 1.0}
    combos = [row("eager", 32, 100.0), row("cudagraphs", 32, 1000.0), row("cudagraphs", 64, 1050.0),
              row("compile", 64, 5000.0, status="fell_back"), row("cudagraphs", 16, 400.0)]
    pick = probe.choose(combos, 0.10)
    assert (pick["mode"], pick["batch_size"]) == ("cudagraphs", 32) and "smallest batch within" in pick["why"]
    pick = probe.choose(combos, 0.0)
    assert (pick["mode"], pick["batch_size"]) == ("cudagraphs", 64) and pick["why"] == "fastest"
    assert probe.choose([row("compile", 4, 9.0, status="fell_back"), {"mode": "eager", "batch_size": 2,
                                                                     "status": "skipped"}], 0.1) is None
    # a combination still compiling when the budget runs out is interrupted, and the flag says so
    # even when torch.compile wraps the exception in its own type
    import time

    with pytest.raises(probe.OverBudget):
        with probe.alarm(0.2):
            time.sleep(2)
    assert probe.ALARM["fired"]
    with probe.alarm(5):
        pass
    assert not probe.ALARM["fired"]


def test_recall_probe_trains_both_variants(shared_datasets, tmp_path, run_benchmark):
    result = run_benchmark("recall_probe", "--backbone", "tiny-llama", "--max-train", "40", "--passes", "1", "2",
                           "--features", str(tmp_path / "features.pt"), tmp_path=tmp_path)
    assert result["train_samples"] == 40 and result["dev_samples"] > 100
    runs = {(r["passes"], r["standardize"]): r for r in result["runs"]}
    assert set(runs) == {(1, False), (1, True), (2, False), (2, True)}
    assert runs[(1, True)]["updates"] == 10 and runs[(2, False)]["updates"] == 20
    assert runs[(1, True)]["chance_loss"] == pytest.approx(math.log(601), abs=1e-3)
    for r in result["runs"]:
        assert 0 <= r["dev_recall@1"] <= r["dev_recall@10"] <= r["dev_recall@50"] <= r["dev_recall@700"] <= 100
    # Standardizing decorrelates the items from the very start (a shared mean is what it removes).
    assert runs[(1, True)]["item_cosine_mean"] < runs[(1, False)]["item_cosine_mean"]
    assert (tmp_path / "features.pt").is_file()
    # The cached features are reused only for the same backbone, slice and dataset.
    again = run_benchmark("recall_probe", "--backbone", "tiny-llama", "--max-train", "20", "--passes", "1",
                          "--features", str(tmp_path / "features.pt"), tmp_path=tmp_path)
    assert again["train_samples"] == 20


def test_item_token_probe_measures_and_trains_the_rows(shared_datasets, tmp_path, run_benchmark):
    from pecrs.config import RunConfig
    from pecrs.pretrained import build_model, save_pretrained

    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = "tiny-llama", 16
    cfg.train.dataset = str(shared_datasets / "inspired")
    save_pretrained(build_model(cfg, seed=0), cfg, tmp_path / "ckpt")
    result = run_benchmark("item_token_probe", str(tmp_path / "ckpt"), "--samples", "6", "--train-steps", "4",
                           "--every", "2", "--lr", "0.05", tmp_path=tmp_path)
    assert result["turns"] == 6
    before = result["model"]
    assert before["positions"] >= 6 and 0 < before["mean_p_item"] < 1
    # At init the adapter is zero and the rows are the base ones: the model is the base LM.
    assert before["mean_p_item"] == pytest.approx(result["base_lm"]["mean_p_item"], rel=1e-4)
    curve = result["rows_only"]["curve"]
    assert [c["updates"] for c in curve] == [2, 4]
    # Training the [ITEM] row on replies that name items makes [ITEM] more likely there.
    assert curve[-1]["mean_p_item"] > 2 * before["mean_p_item"]


def test_evaluation_batches_ranks_both_ways_alike(shared_datasets, tmp_path, run_benchmark):
    from pecrs.testing import make_tiny_run

    run, _ = make_tiny_run(tmp_path / "run")
    result = run_benchmark("evaluation_batches", "--model", str(run), "--samples", "10", "--batch-size", "4",
                           tmp_path=tmp_path)
    assert result["settings"]["samples"] == 10 and set(result["seconds"]) == {"sample_order", "length_sorted"}
    tokens = result["test_targets_context_tokens"]
    assert tokens["real"] <= tokens["length_sorted"] < tokens["sample_order"]
    assert result["samples_whose_top50_differ"] <= 1   # padding moves float rounding only


def test_beam_prefill_decodes_both_ways_alike(shared_datasets, tmp_path, run_benchmark):
    from pecrs.testing import make_tiny_run

    run, _ = make_tiny_run(tmp_path / "run")
    result = run_benchmark("beam_prefill", "--model", str(run), "--samples", "6", "--batch-size", "3",
                           tmp_path=tmp_path)
    assert result["settings"]["samples"] == 6 and set(result["seconds_per_reply"]) == {"stock", "shared_prompt"}
    assert result["replies_differing"] == 0   # the same seed and the same logits up to rounding


def test_title_linking_reports_speed_and_real_links(shared_datasets, tmp_path, run_benchmark):
    result = run_benchmark("title_linking", "--quick", tmp_path=tmp_path)
    assert result["synthetic"]["items"] == 2000 and result["synthetic"]["link_us_per_word"] > 0
    assert result["synthetic"]["build_us_per_item"] > 0
    real = result["inspired_test"]
    assert real["turns"] == 2089 and 0 < real["seeker_links"] <= real["links"]


def test_catalog_tokenize_compares_both_ways_on_the_same_ids(tmp_path, run_benchmark):
    result = run_benchmark("catalog_tokenize", "--quick", tmp_path=tmp_path)
    assert result["items"] == 2000 and result["same_ids"] and len(result["ways"]) == 2
    assert all(w["shape"][0] == 2000 and 0 < w["shape"][1] <= 128 for w in result["ways"].values())


def test_lora_fold_times_both_ways_and_compares_rankings(shared_datasets, tmp_path, run_benchmark):
    from pecrs.testing import make_tiny_run

    run, _ = make_tiny_run(tmp_path / "run")
    result = run_benchmark("lora_fold", "--model", str(run), "--catalog", str(shared_datasets / "inspired" / "items.jsonl"),
                           "--quick", "--dtype", "float32", tmp_path=tmp_path)
    assert set(result["reply_s_per_token"]) == {"folded", "kept"} and result["reply_speedup_folded"] > 0
    agreement = result["agreement_with_float32"]
    assert agreement["kept"]["top1"] == 1.0 and agreement["folded"]["top1"] == 1.0   # float32 both: rounding only


def test_hard_negative_gap_reports_the_losses_for_each_number_of_hard_negatives(tmp_path, run_benchmark):
    from pecrs.pretrained import build_model, save_pretrained
    from pecrs.testing import tiny_config, write_dataset

    write_dataset(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data")
    save_pretrained(build_model(cfg, seed=0), cfg, tmp_path / "run" / "best")
    result = run_benchmark("hard_negative_gap", "--model", str(tmp_path / "run"), "--dataset", str(tmp_path / "data"),
                           "--hard", "0", "3", "--depth", "5", "--m-train", "6", "--rankings", "8", tmp_path=tmp_path)
    assert result["settings"]["samples"] == 4 and result["settings"]["depth"] == 5   # the 4 dev dialogues' targets
    losses = result["losses"]
    assert set(losses) == {"0", "3"} and all(math.isfinite(v[k]) for v in losses.values() for k in ("recall", "rerank"))
    assert losses["3"]["rerank_minus_first"] == pytest.approx(losses["3"]["rerank"] - losses["0"]["rerank"], abs=1e-3)
    assert result["chance_rerank"] == pytest.approx(math.log(7), abs=1e-3)
    rankings = result["rankings"]   # the 16-item catalog: recall's top 50 holds it all; 8 re-ranked hold 8
    assert rankings["recall_order"]["recall@50"] == 1.0
    assert rankings["reranked_top_8"]["recall@10"] == rankings["reranked_top_8"]["recall@50"]


def test_rouge_protocols_scores_a_predictions_file_both_ways_beside_the_constant_reply(tmp_path, run_benchmark):
    from pecrs.metrics import rouge_1_2, rouge_1_2_paper_protocol
    from pecrs.testing import write_dataset

    write_dataset(tmp_path / "data")
    # 3 dialogues; every record answers a turn but d1's second item of a turn (no reply of its own)
    rows = [("d0", 1, "Try [ITEM]", "Try [ITEM] tonight"), ("d0", 3, "bye", "bye then"),
            ("d1", 1, "hmm", "[ITEM] is good"), ("d1", 1, None, None), ("d2", 1, "[ITEM] maybe", "What genre?")]
    records = []
    for dialogue, turn, generated, reference in rows:
        r = {"dialogue_id": dialogue, "turn_index": turn, "target": None, "target_seen_before": False,
             "target_rank": None, "top10": []}
        if generated is not None:
            r.update(generated=generated, reference=reference)
        records.append(r)
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_benchmark("rouge_protocols", "--predictions", str(path), "--dataset", str(tmp_path / "data"),
                           "--draws", "5", tmp_path=tmp_path)
    generated = [g for _, _, g, _ in rows if g is not None]
    references = [t for _, _, _, t in rows if t is not None]
    model = result["model"]
    assert result["replies"] == 4
    assert model["rouge1"] == pytest.approx(rouge_1_2(generated, references)["rouge1"])
    assert model["rouge1_paper_protocol"] == pytest.approx(
        rouge_1_2_paper_protocol(generated, references)["rouge1_paper_protocol"])
    assert model["f1_item"] == pytest.approx(100 * 2 * 1 / (2 * 1 + 1 + 1))     # TP d0, FP d2, FN d1
    # 5 samples make one batch of 8, whatever the dialogues' order: one reply scored per shuffle
    assert model["last_of_8"]["replies"] == 1
    constant = result["constant_reply"]
    assert result["constant_reply_scores"]["rouge1"] == pytest.approx(rouge_1_2([constant] * 4, references)["rouge1"])


def test_rouge_protocols_scores_the_last_reply_of_each_batch_of_8_as_the_released_code(tmp_path, run_benchmark):
    from pecrs.metrics.generation import rouge_pairs_paper_protocol
    from pecrs.testing import write_dataset

    write_dataset(tmp_path / "data")
    # One dialogue of 10 records, so no shuffle changes the order: batches are records 0-7 and 8-9;
    # record 7 is a turn's second item (no reply of its own), so batch 1's last reply is record 6's.
    records, generated, references = [], [], []
    for turn in range(10):
        r = {"dialogue_id": "d0", "turn_index": turn if turn != 7 else 6, "target": None,
             "target_seen_before": False, "target_rank": None, "top10": []}
        if turn != 7:
            generated.append(f"reply {turn} " + "word " * turn)
            references.append(f"reply {turn}")
            r.update(generated=generated[-1], reference=references[-1])
        records.append(r)
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_benchmark("rouge_protocols", "--predictions", str(path), "--dataset", str(tmp_path / "data"),
                           "--draws", "3", tmp_path=tmp_path)
    r1, _ = rouge_pairs_paper_protocol(generated, references)
    last = result["model"]["last_of_8"]
    assert last["replies"] == 2                                  # replies 6 and 9 (index 6 and 8 of 9)
    assert last["rouge1_paper_protocol_mean"] == pytest.approx(100 * (r1[6] + r1[8]) / 2)
    assert last["sd"] == pytest.approx(0.0, abs=1e-9)
