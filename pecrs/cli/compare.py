"""pecrs compare A.jsonl B.jsonl: two `pecrs evaluate --predictions` files of the same split, each
metric of A and B, A − B and its 95% interval from a paired bootstrap over dialogues
(pecrs.metrics.paired)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..data import ITEM, DataError
from .common import positive_int, seed_int

RECALL_CUTOFFS = (1, 10, 50)


def read_predictions(path: Path) -> dict[tuple, dict]:
    """(dialogue_id, turn_index, target, k-th such sample) -> record, from one predictions file."""
    from ..loaders import read_jsonl

    records, seen = {}, Counter()
    for line, record in read_jsonl(path):
        _check_record(record, {"path": str(path), "line": line})
        key = (record["dialogue_id"], record["turn_index"], record["target"])
        seen[key] += 1
        records[(*key, seen[key])] = record
    if not records:
        raise DataError("no predictions in this file", path=str(path))
    return records


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_record(record: dict, where: dict) -> None:
    """The fields and types `pecrs evaluate --predictions` writes; anything else would count
    wrongly or fail without a line (a rank "3", a seen_before "false")."""
    for field in ("dialogue_id", "turn_index", "target", "target_rank"):
        if field not in record:
            raise DataError("missing field: is this a `pecrs evaluate --predictions` file?", field=field, **where)
    checks = [("dialogue_id", isinstance(record["dialogue_id"], (str, int)) and not isinstance(record["dialogue_id"], bool),
               "a string"),
              ("turn_index", _is_int(record["turn_index"], 0), "an integer of at least 0"),
              ("target", record["target"] is None or isinstance(record["target"], str), "an item id (string) or null"),
              ("target_rank", record["target_rank"] is None or _is_int(record["target_rank"], 1),
               "an integer of at least 1 or null"),
              ("target_seen_before", isinstance(record.get("target_seen_before", False), bool), "true or false")]
    if "generated" in record or "reference" in record:
        checks += [(name, isinstance(record.get(name), str), "a string (a reply has both generated and reference)")
                   for name in ("generated", "reference")]
    for field, ok, expected in checks:
        if not ok:
            raise DataError(f"expected {expected}, got {record.get(field)!r}", field=field, **where)


def metric_units(records: list[dict]) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """The recall metrics' units (one per record with a target; dedup: a target not mentioned
    before): name -> (record indices, numerators, denominators)."""
    units: dict[str, tuple[list[int], list[float], list[float]]] = {}

    def add(name, i, num, den):
        for column, value in zip(units.setdefault(name, ([], [], [])), (i, num, den)):
            column.append(value)

    for i, r in enumerate(records):
        if r["target"] is None:
            continue
        for k in RECALL_CUTOFFS:
            hit = float(r["target_rank"] is not None and r["target_rank"] <= k)
            add(f"recall@{k}", i, hit, 1.0)
            if not r.get("target_seen_before"):
                add(f"dedup_recall@{k}", i, hit, 1.0)
    return units


def reply_units(records: list[dict]) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """The reply metrics' units (one per record with a reply): F-1 of [ITEM] as 2TP / (2TP+FP+FN)
    per reply, ROUGE-1/2 F-measures, as the texts stand and as the paper's code scores them."""
    from ..metrics.generation import item_f1_terms, rouge_pairs, rouge_pairs_paper_protocol

    rows = [i for i, r in enumerate(records) if "generated" in r]
    if not rows:
        return {}
    generated, references = [records[i]["generated"] for i in rows], [records[i]["reference"] for i in rows]
    f1_num, f1_den = item_f1_terms([ITEM in g for g in generated], [ITEM in t for t in references])
    r1, r2 = rouge_pairs(generated, references)
    p1, p2 = rouge_pairs_paper_protocol(generated, references)
    ones = np.ones(len(rows))
    return {"f1_item": (rows, f1_num, f1_den), "rouge1": (rows, r1, ones), "rouge2": (rows, r2, ones),
            "rouge1_paper_protocol": (rows, p1, ones), "rouge2_paper_protocol": (rows, p2, ones)}


def compare(a_path: Path, b_path: Path, resamples: int = 10_000, seed: int = 0) -> dict:
    """{metric: paired_ratio_bootstrap result, with "units"} for the metrics both files allow."""
    from ..metrics.paired import dialogue_sums, paired_ratio_bootstrap

    a, b = read_predictions(a_path), read_predictions(b_path)
    if a.keys() != b.keys():
        hint = "compare evaluations of one split"
        for part, whole, name in ((a, b, a_path), (b, a, b_path)):   # one split, one file recall-only
            if part.keys() < whole.keys() and all(r.get("target") is not None for r in part.values()):
                hint = (f"{name} holds only the samples with a target (written with --no-generate): compare it "
                        f"with another --no-generate evaluation")
        raise ValueError(f"{a_path} and {b_path} hold different samples ({len(a.keys() - b.keys())} only in the "
                         f"first, {len(b.keys() - a.keys())} only in the second): {hint}")
    keys = sorted(a, key=str)
    recs_a, recs_b = [a[k] for k in keys], [b[k] for k in keys]
    dialogues = {d: n for n, d in enumerate(dict.fromkeys(k[0] for k in keys))}
    dialogue_of = np.array([dialogues[k[0]] for k in keys])
    units_a = {**metric_units(recs_a), **reply_units(recs_a)}
    units_b = {**metric_units(recs_b), **reply_units(recs_b)}
    out = {}
    for name in (*(f"recall@{k}" for k in RECALL_CUTOFFS), *(f"dedup_recall@{k}" for k in RECALL_CUTOFFS),
                 "f1_item", "rouge1", "rouge2", "rouge1_paper_protocol", "rouge2_paper_protocol"):
        if name not in units_a or name not in units_b:
            continue
        (rows_a, num_a, den_a), (rows_b, num_b, den_b) = units_a[name], units_b[name]
        if rows_a != rows_b:
            first = keys[min(set(rows_a) ^ set(rows_b))]
            raise ValueError(f"{name}: the two files have replies for different samples, first dialogue "
                             f"{first[0]!r} turn {first[1]} (a reply in only one of them)")
        where = dialogue_of[rows_a]
        sums = [dialogue_sums(x, where, len(dialogues)) for x in (num_a, den_a, num_b, den_b)]
        scale = 1.0 if name.startswith(("recall", "dedup")) else 100.0
        out[name] = {**paired_ratio_bootstrap(*sums, resamples=resamples, seed=seed, scale=scale),
                     "units": len(rows_a)}
    return {"a": str(a_path), "b": str(b_path), "samples": len(keys), "dialogues": len(dialogues),
            "resamples": resamples, "metrics": out}


def _compare(args) -> int:
    result = compare(Path(args.a), Path(args.b), args.resamples, args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"A = {result['a']}\nB = {result['b']}\n{result['samples']} samples in {result['dialogues']} dialogues; "
          f"95% intervals from {result['resamples']} draws of the dialogues")
    print(f"{'metric':>16} {'A':>8} {'B':>8} {'A - B':>8}  {'95% interval':>18} {'p':>6} {'units':>6}")
    for name, m in result["metrics"].items():
        low, high = m["ci95"]
        print(f"{name:>16} {m['a']:8.3f} {m['b']:8.3f} {m['difference']:+8.3f}  [{low:+7.3f}, {high:+7.3f}] "
              f"{m['p']:6.3f} {m['units']:6d}")
    return 0


def add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="two models' predictions on one split: differences and 95%% intervals",
                              description=__doc__)
    p.add_argument("a", help="predictions of model A (`pecrs evaluate --predictions`)")
    p.add_argument("b", help="predictions of model B, the same split")
    p.add_argument("--resamples", type=positive_int, default=10_000, help="bootstrap draws (default 10000)")
    p.add_argument("--seed", type=seed_int, default=0, help="the bootstrap's seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_compare)
