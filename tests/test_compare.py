"""pecrs compare: two models' per-sample predictions, each metric's difference and its 95% interval
from a paired bootstrap over dialogues (pecrs.metrics.paired)."""
import json

import numpy as np
import pytest

from pecrs.cli import main
from pecrs.metrics.paired import dialogue_sums, paired_ratio_bootstrap


def test_point_values_are_ratios_of_sums_and_equal_models_differ_by_nothing():
    num, den = np.array([1.0, 0, 2, 1]), np.array([1.0, 1, 2, 2])
    same = paired_ratio_bootstrap(num, den, num, den, resamples=500)
    assert same["a"] == same["b"] == pytest.approx(4 / 6)
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["p"] == 1
    ones, half = np.ones(20), np.arange(20) % 2                  # 20 dialogues: A hits all, B every other
    better = paired_ratio_bootstrap(ones, ones, half, ones, resamples=500, scale=100)
    assert (better["a"], better["b"], better["difference"]) == (100, 50, 50)
    assert better["ci95"][0] > 0 and better["p"] < 0.01


def test_the_interval_is_that_of_a_mean_over_dialogues():
    """With one unit per dialogue, the paired difference is a mean of D per-dialogue differences:
    the bootstrap's 95% interval is about ±1.96 sd/sqrt(D) around it."""
    rng = np.random.default_rng(1)
    d = 400
    a, b = rng.random(d) < 0.6, rng.random(d) < 0.5
    out = paired_ratio_bootstrap(a, np.ones(d), b, np.ones(d), resamples=4000, seed=2)
    half = 1.96 * np.std(a.astype(float) - b) / np.sqrt(d)
    low, high = out["ci95"]
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < out["difference"] < high


def test_dialogues_not_samples_are_the_unit():
    """Two samples of one dialogue that always agree are drawn together: duplicating every
    sample inside its dialogue leaves the interval as it was (a per-sample bootstrap would
    shrink it by sqrt(2))."""
    rng = np.random.default_rng(3)
    hits_a, hits_b = (rng.random(100) < p for p in (0.5, 0.4))
    once = [dialogue_sums(x, np.arange(100), 100) for x in (hits_a, np.ones(100), hits_b, np.ones(100))]
    twice_index = np.repeat(np.arange(100), 2)
    twice = [dialogue_sums(np.repeat(x, 2), twice_index, 100) for x in (hits_a, np.ones(100), hits_b, np.ones(100))]
    assert paired_ratio_bootstrap(*once, resamples=2000)["ci95"] == pytest.approx(
        paired_ratio_bootstrap(*twice, resamples=2000)["ci95"])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _record(dialogue, turn, target, rank, generated=None, reference="Try [ITEM]", seen=False):
    r = {"dialogue_id": dialogue, "turn_index": turn, "target": target, "target_seen_before": seen,
         "target_rank": rank, "top10": []}
    if generated is not None:
        r.update(reference=reference, generated=generated)
    return r


def test_cli_compares_two_prediction_files_by_hand(tmp_path, capsys):
    # A: both targets at rank 1, names an item in both replies; B: ranks 3 and none, names none.
    a = _write(tmp_path / "a.jsonl", [_record("d0", 1, "5", 1, "Try [ITEM]"), _record("d1", 1, "7", 1, "[ITEM] then", reference="[ITEM] then"),
                                      _record("d1", 3, None, None, "bye", reference="bye")])
    b = _write(tmp_path / "b.jsonl", [_record("d1", 1, "7", None, "hmm", reference="[ITEM] then"),
                                      _record("d0", 1, "5", 3, "Try it"),
                                      _record("d1", 3, None, None, "bye", reference="bye")])
    assert main(["compare", a, b, "--json", "--resamples", "500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["samples"], out["dialogues"]) == (3, 2)
    m = out["metrics"]
    assert (m["recall@1"]["a"], m["recall@1"]["b"], m["recall@10"]["b"]) == (1.0, 0.0, 0.5)
    assert m["recall@1"]["units"] == 2 and m["dedup_recall@1"]["a"] == 1.0
    # [ITEM] in reply vs reference: A (yes, yes) (yes, yes) (no, no) = 100; B no TP: 0
    assert (m["f1_item"]["a"], m["f1_item"]["b"], m["f1_item"]["units"]) == (100.0, 0.0, 3)
    assert m["rouge1"]["a"] == pytest.approx(100.0)     # every reply of A is its reference's words
    # B's replies, ROUGE-1 F as they stand: "hmm"/"item then" 0, "try it"/"try item" 1/2, "bye" 1;
    # as the paper's code scores them ("A: " first, [ITEM] as "movie id"): 1/3, 4/7, 1.
    assert m["rouge1"]["b"] == pytest.approx(50.0)
    assert m["rouge1_paper_protocol"]["b"] == pytest.approx(100 * (1 / 3 + 4 / 7 + 1) / 3)
    assert m["rouge1_paper_protocol"]["a"] == pytest.approx(100.0) and m["rouge2_paper_protocol"]["units"] == 3
    assert main(["compare", a, b, "--resamples", "100"]) == 0
    assert "recall@1" in capsys.readouterr().out


def test_cli_refuses_files_of_different_samples_or_another_format(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [_record("d0", 1, "5", 1)])
    b = _write(tmp_path / "b.jsonl", [_record("d0", 1, "6", 1)])
    assert main(["compare", a, b]) == 2
    assert "hold different samples (1 only in the first, 1 only in the second)" in capsys.readouterr().err
    # One split, one of them written with --no-generate (only the samples with a target): said so.
    full = _write(tmp_path / "full.jsonl", [_record("d0", 1, "5", 1), _record("d0", 3, None, None)])
    assert main(["compare", full, a]) == 2
    assert f"{a} holds only the samples with a target (written with --no-generate)" in capsys.readouterr().err
    c = _write(tmp_path / "c.jsonl", [{"dialogue_id": "d0", "turn_index": 1, "target": "5"}])
    assert main(["compare", a, c]) == 2
    assert f"{c}:1 field 'target_rank'" in capsys.readouterr().err


@pytest.mark.parametrize("change, field", [
    ({"target_rank": "3"}, "target_rank"),       # a raw TypeError before
    ({"target_rank": -5}, "target_rank"),        # counted as a hit at @1 before
    ({"target_rank": True}, "target_rank"),
    ({"target_seen_before": "false"}, "target_seen_before"),   # the dedup rows vanished before
    ({"dialogue_id": ["x"]}, "dialogue_id"),     # unhashable before
    ({"turn_index": 1.5}, "turn_index"),
    ({"generated": None}, "generated"),
    ({"generated": "hi"}, "reference"),          # a reply without its reference: a KeyError before
])
def test_cli_names_a_wrongly_typed_field_with_its_line(tmp_path, capsys, change, field):
    a = _write(tmp_path / "a.jsonl", [_record("d0", 1, "5", 1), _record("d0", 2, "6", 2)])
    b = _write(tmp_path / "b.jsonl", [_record("d0", 1, "5", 1), {**_record("d0", 2, "6", 2), **change}])
    assert main(["compare", a, b]) == 2
    assert f"{b}:2 field '{field}'" in capsys.readouterr().err


def test_cli_refuses_an_empty_file_and_names_a_reply_in_one_file_only(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["compare", str(empty), str(empty)]) == 2
    assert "no predictions in this file" in capsys.readouterr().err
    a = _write(tmp_path / "a.jsonl", [_record("d0", 1, "5", 1, "Try [ITEM]"), _record("d1", 1, "6", 1, "ok")])
    b = _write(tmp_path / "b.jsonl", [_record("d0", 1, "5", 1, "Try [ITEM]"), _record("d1", 1, "6", 1)])
    assert main(["compare", a, b]) == 2
    assert "replies for different samples, first dialogue 'd1' turn 1" in capsys.readouterr().err
