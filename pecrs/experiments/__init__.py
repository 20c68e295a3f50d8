"""Rerun the paper's tables and figures, one resumable command each.

    pecrs experiment NAME --config CONFIG [--output-dir DIR] [--parts P,...] [overrides...]
    pecrs experiment NAME --model RUN [--output-dir DIR] [--parts P,...] [overrides...]   (given.py)

NAME                 what it measures                                        datasets
main (table2/table3) train, then test recall/Unique/dedup/naive + ROUGE/F-1/PPL/Dist   INSPIRED + ReDial-subset
table5               ablations: 9 trainings + test evaluations, time per batch       --config
table6               one model, each item field removed at inference (R@50)          --config
table7               zero-shot instruct LMs (hit rate, Unique, ROUGE)                --config
table8               one model, every decoding preset (ROUGE, Dist)                  --config
table9_10            genre of the top-1 recommendation vs random                     INSPIRED + ReDial-subset
fig3                 R@50 over an M_train x M_inference grid (fig3.png)              --config
fig4                 R@50 by number of turns before the response (fig4.png)          --config

How a run is cut into resumable parts, keyed, resumed and written out: parts.py (start there),
keys.py (what decides a number), runs.py (training runs, checkpoints), given.py (a model trained
already, `--model`), caches.py (models kept
between parts), provenance.py, json_files.py, reports.py (result.json, table.md, figures),
markdown.py (cells); the experiments themselves: tables.py, analysis.py, zeroshot.py, on
measures.py; registry: runner.py; the paper's numbers: paper.py. See also docs/results.md.
Overrides are `section.key=value` for every dataset, or `inspired:section.key=value` /
`redial:section.key=value` for one of them.
"""
from __future__ import annotations

# Names only: importing this package stays light (no torch), for `pecrs --help`.
EXPERIMENT_NAMES = ("main", "table5", "table6", "table7", "table8", "table9_10", "fig3", "fig4")
ALIASES = {"table2": "main", "table3": "main", "table9": "table9_10", "table10": "table9_10"}
NAMES = EXPERIMENT_NAMES + tuple(ALIASES)


def run_experiment(*args, **kwargs) -> dict:
    """See `pecrs.experiments.runner.run_experiment`."""
    from .runner import run_experiment as run

    return run(*args, **kwargs)


__all__ = ["EXPERIMENT_NAMES", "ALIASES", "NAMES", "run_experiment"]
