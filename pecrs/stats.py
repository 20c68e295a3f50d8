"""Dataset statistics in the shape of the paper's Table 1, per split and in total.

Table 1's "Recommender utterances" counts *samples* (a turn recommending k items counts k times):
for INSPIRED 10,122 = 8,152 + 977 + 993 instances, for ReDial 73,999 = 65,670 + 8,329. Its
"with/without recommendation" columns split those samples by whether they have a target item.
We print both that and the plain turn counts, named so they cannot be confused.
"""
from __future__ import annotations

from .data import RECOMMENDER, SEEKER, DatasetBundle, Dialogue
from .samples import make_samples

# (key, column header) in print order; every key is an integer count per split.
COLUMNS = (
    ("dialogues", "dialogues"),
    ("utterances", "utterances"),
    ("seeker_utterances", "seeker utt."),
    ("recommender_utterances", "rec. utt. (turns)"),
    ("instances", "rec. utt. (instances)"),
    ("instances_with_rec", "with rec."),
    ("instances_without_rec", "w/o rec."),
    ("item_mentions", "item mentions"),
    ("unique_items", "unique items"),
)


def split_stats(dialogues: list[Dialogue]) -> dict:
    samples = make_samples(dialogues)
    turns = [t for d in dialogues for t in d.turns]
    with_rec = sum(s.target is not None for s in samples)
    return {
        "dialogues": len(dialogues),
        "utterances": len(turns),
        "seeker_utterances": sum(t.role == SEEKER for t in turns),
        "recommender_utterances": sum(t.role == RECOMMENDER for t in turns),
        "instances": len(samples),
        "instances_with_rec": with_rec,
        "instances_without_rec": len(samples) - with_rec,
        "instances_target_seen_before": sum(s.target_seen_before for s in samples),
        "item_mentions": sum(len(t.items) for t in turns),
        "unique_items": len({i for t in turns for i in t.items}),
    }


def dataset_stats(bundle: DatasetBundle) -> dict:
    splits = {name: split_stats(dialogues) for name, dialogues in bundle.splits.items()}
    totals = {key: sum(s[key] for s in splits.values()) for key in next(iter(splits.values()))}
    # Distinct items do not add up across splits: count the union instead.
    totals["unique_items"] = len({i for ds in bundle.splits.values() for d in ds
                                  for t in d.turns for i in t.items})
    return {
        "dataset": bundle.name,
        "format": bundle.fmt,
        "catalog_items": len(bundle.items),
        "unique_items": totals["unique_items"],
        "splits": splits,
        "totals": totals,
        "skipped": dict(bundle.skipped),
        "repaired": dict(bundle.repaired),
    }


def format_stats(stats: dict) -> str:
    """A plain-text table: one row per split plus a total row, then catalog size and skips."""
    rows = [(name, s) for name, s in stats["splits"].items()] + [("total", stats["totals"])]
    header = ["split"] + [title for _, title in COLUMNS]
    table = [header] + [[name] + [f"{s[key]:,}" for key, _ in COLUMNS] for name, s in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    fmt_row = lambda r: "  ".join(  # noqa: E731 - first column left-aligned, numbers right
        cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
    lines = [f"{stats['dataset']} ({stats['format']}): {stats['catalog_items']:,} catalog items, "
             f"{stats['unique_items']:,} mentioned in dialogues", fmt_row(table[0]),
             "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in table[1:]]
    for kind in ("skipped", "repaired"):
        for what, n in sorted(stats[kind].items()):
            lines.append(f"{kind}: {what}: {n:,}")
    return "\n".join(lines)
