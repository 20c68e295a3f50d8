"""What an experiment leaves behind: DIR/NAME/result.json (every number, each part's status and
provenance), DIR/NAME/table.md (our numbers beside the paper's) and its figures as PNGs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .json_files import write_json
from .markdown import NOT_RUN
from .parts import Context, Part, records
from .provenance import git_revision, hardware, now, provenance_lines
from .runs import training_progress

RESULT_FILE = "result.json"
TABLE_FILE = "table.md"


@dataclass
class Report:
    summary: dict
    markdown: str
    figures: dict[str, Callable] = field(default_factory=dict)   # file name -> draw(path)


def write_outputs(ctx: Context, parts: list[Part], status: dict, report: Report, configs_meta: dict) -> dict:
    recs = records(ctx, parts)
    figures = {}
    for fname, draw in report.figures.items():
        path = ctx.folder / fname
        try:
            drew = draw(path)
        except Exception as e:  # noqa: BLE001 - a figure must not lose the numbers
            drew, figures[fname] = False, f"failed: {type(e).__name__}: {e}"
        if drew:
            figures[fname] = str(path.name)
        elif fname not in figures:
            figures[fname] = NOT_RUN
            if path.exists():
                path.unlink()
    result = {
        "experiment": ctx.name,
        "command": ctx.command,
        "date": now(),
        "hardware": hardware(),
        "git": git_revision(),
        "datasets": configs_meta,
        "options": ctx.options,
        "accept_partial": ctx.accept_partial,
        "summary": report.summary,
        "figures": figures,
        "parts": {p.name: {"kind": p.kind, "dataset": p.dataset, "describe": p.describe,
                           **status.get(p.name, {"status": NOT_RUN}),
                           "ran_this_call": status.get(p.name, {}).get("status") == "ran",
                           "record": recs.get(p.name)} for p in parts},
    }
    write_json(ctx.folder / RESULT_FILE, result)
    header = [f"<!-- written by `pecrs experiment {ctx.name}`; rerun it to refresh -->",
              "", f"Last invocation: `{ctx.command}` (each part's own command is in result.json)", "", "Measured on:", *provenance_lines(recs), ""]
    done = sum(1 for p in parts if p.name in recs)
    header.append(f"Parts finished: {done}/{len(parts)} "
                  + ("(all)" if done == len(parts) else
                     "(missing: " + ", ".join(p.name for p in parts if p.name not in recs) + ")"))
    checkpoints = {n: (r.get("result") or {}).get("checkpoint") or {} for n, r in recs.items()}
    partial = [f"{n} ({ck.get('checkpoint')} checkpoint, {training_progress(ck)})"
               for n, ck in checkpoints.items() if ck.get("finished") is False]
    if partial:
        header.append("")
        header.append("**Partly trained models** (training stopped at max_train_minutes; --accept-partial): "
                      + ", ".join(partial))
    header.append("")
    (ctx.folder / TABLE_FILE).write_text("\n".join(header) + "\n" + report.markdown.rstrip() + "\n")
    return result


def save_png(fig, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.is_file() and path.stat().st_size > 0


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
