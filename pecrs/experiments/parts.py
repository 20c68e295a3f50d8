"""Parts, the resumable pieces every paper experiment is made of, and running them.

An experiment is a list of *parts*. A part is one training run or one evaluation (of a trained
model, or of a model-free baseline), small enough
for one GPU call of under 10 minutes (a training part stops at `train.max_train_minutes` and
resumes on the next call). Each finished part writes

    DIR/NAME/parts/<part>.json     {"part", "key", "kind", "dataset", "spec", "result", "provenance"}

and a later invocation skips it while its `key` still matches (the key hashes everything that
decides the part's numbers: the config, the dataset's files, the part's own settings; not
the time budget, checkpointing cadence or batch size of evaluation; see keys.py). Changing an
override that matters therefore re-runs the parts it affects; the old file is overwritten.

Trained models live in DIR/runs/<dataset>-<hash>/ (a `pecrs train` run folder), addressed
by the hash of their training config, so experiments that need the same model (the
full model of Table 5, the model of Table 6, the M_train=150 model of Figure 3, ...) train it
once. A run is finished when `experiment_done.json` is in it; until then evaluations of it are
"blocked", unless `accept_partial` is set (then they use best/, else last/, and say so). See
runs.py.

After the parts that were asked for have run, `DIR/NAME/result.json` (every number, each
part's status and provenance) and `DIR/NAME/table.md` (our numbers beside the paper's) are
rewritten from all the part files there, and figures are drawn as PNGs (reports.py). A number
that was not measured is never shown: its cell reads "not run".
"""
from __future__ import annotations

import contextlib
import fnmatch
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from .json_files import read_json, write_json
from .keys import part_key
from .markdown import NOT_RUN
from .provenance import backbone_source, git_revision, hardware, now

PARTS_DIR = "parts"
RUNS_DIR = "runs"
DONE_FILE = "experiment_done.json"


class Blocked(Exception):
    """The part cannot run yet: the model it evaluates has not finished training."""


class NotAvailable(Exception):
    """The part cannot run on this machine (e.g. a backbone that is not installed)."""


class InProgress(Exception):
    """A training part stopped at its time budget; rerun to resume."""

    def __init__(self, info: dict):
        super().__init__(f"stopped at max_train_minutes: epoch {info['epoch']}/{info['epochs']}, "
                         f"batch {info['batch']} of the next; rerun to resume")
        self.info = info


@dataclass
class Part:
    name: str
    kind: str                          # "train", "eval", or "baseline" (no model)
    run: Callable[[], dict]            # returns the part's result (JSON-ready)
    spec: dict                         # the part's own settings (hashed into its key)
    dataset: str | None = None         # "inspired", "redial", ...
    config: RunConfig | None = None    # the config it runs with (provenance, key)
    train_key: str | None = None       # the training run it uses or makes
    describe: str = ""


@dataclass
class Context:
    """What an experiment's parts need: configs per dataset, folders, options."""
    name: str
    root: Path
    configs: dict[str, RunConfig]      # dataset key -> config, the --config dataset first
    options: dict = field(default_factory=dict)
    accept_partial: bool = False
    progress: bool = False
    command: str = ""
    given: dict = field(default_factory=dict)   # train key -> given.GivenModel (`--model`)

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def runs(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def primary(self) -> str:
        return next(iter(self.configs))


def select(parts: list[Part], patterns: list[str] | None) -> list[Part]:
    if not patterns:
        return list(parts)
    names = [p.name for p in parts]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"no part matches '{pat}'; parts are: {', '.join(names)}")
    return [p for p in parts if any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)]


def part_file(ctx: Context, part: Part) -> Path:
    return ctx.folder / PARTS_DIR / f"{part.name}.json"


def finished_result(ctx: Context, part: Part, key: str) -> dict | None:
    """The part's stored record if it is current (same key) and not superseded (an evaluation of a
    partly trained model whose training has since finished is re-run)."""
    rec = read_json(part_file(ctx, part))
    if not rec or rec.get("key") != key:
        return None
    ck = (rec.get("result") or {}).get("checkpoint") or {}
    if ck and not ck.get("finished") and (ctx.runs / ck.get("run_dir", "?") / DONE_FILE).is_file():
        return None
    return rec


def model_missing(ctx: Context, parts: list[Part], part: Part, rec: dict) -> bool:
    """A finished training part whose run folder is not here while an evaluation of it is still to do."""
    if rec["result"].get("given"):
        return False
    if (ctx.runs / str(rec["result"].get("run_dir")) / DONE_FILE).is_file():
        return False
    return any(q.kind == "eval" and q.train_key == part.train_key and finished_result(ctx, q, part_key(q)) is None
               for q in parts)


def merge(ctx: Context, parts: list[Part], files: list[str]) -> list[str]:
    """Restore part records from result.json files measured elsewhere (a GPU machine's $OUT):
    a part whose key matches and that has no current record here is written back."""
    restored = []
    by_name = {p.name: p for p in parts}
    for f in files:
        data = read_json(Path(f))
        if not data or not isinstance(data.get("parts", {}), dict):
            raise ValueError(f"{f}: not a result.json (a JSON object whose 'parts' maps part names to records)")
        for name, entry in (data.get("parts") or {}).items():
            rec = entry.get("record") if isinstance(entry, dict) else None
            part = by_name.get(name)
            if not isinstance(rec, dict):
                continue   # a part that file never measured
            if part is None or rec.get("key") != part_key(part):   # said: a merge that restores less than meant
                why = "no such part here" if part is None else "other settings (config, overrides or data)"
                print(f"pecrs: {f}: part {name} not merged: {why}", file=sys.stderr)
                continue
            if finished_result(ctx, part, rec["key"]) is None:
                write_json(part_file(ctx, part), rec)
                restored.append(name)
    return restored


def run_parts(ctx: Context, parts: list[Part], chosen: list[Part], log=print) -> tuple[dict, list[str]]:
    """Run the chosen parts in order; return ({part: status}, errors)."""
    status, errors = {}, []
    chosen_names = {p.name for p in chosen}
    # The code that runs every part is the code this process imported: read before hours of parts,
    # not after each (a commit made meanwhile is not what ran).
    revision = git_revision()
    for part in parts:
        key = part_key(part)
        rec = finished_result(ctx, part, key)
        if rec is not None and part.kind == "train" and model_missing(ctx, parts, part, rec):
            rec = None      # its model is needed but not on this machine (a merged record): train again
        if rec is not None:
            status[part.name] = {"status": "done earlier"}
            continue
        if part.name not in chosen_names:
            status[part.name] = {"status": NOT_RUN}
            continue
        log(f"[{ctx.name}] {part.name}: {part.describe or part.kind} ...")
        started = time.perf_counter()
        try:
            # Training's and generation's progress lines go to stderr: stdout is the experiment's
            # own output (with --json, one JSON object).
            with contextlib.redirect_stdout(sys.stderr):
                result = part.run()
        except Blocked as e:
            status[part.name] = {"status": "blocked", "reason": str(e)}
            log(f"[{ctx.name}] {part.name}: blocked: {e}")
            continue
        except NotAvailable as e:
            status[part.name] = {"status": NOT_RUN, "reason": str(e)}
            log(f"[{ctx.name}] {part.name}: not run: {e}")
            continue
        except InProgress as e:
            status[part.name] = {"status": "in progress", "reason": str(e), "progress": e.info}
            log(f"[{ctx.name}] {part.name}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - record, carry on with the other parts, fail at the end
            import traceback

            status[part.name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            errors.append(f"{part.name}: {type(e).__name__}: {e}")
            log(traceback.format_exc())
            continue
        seconds = time.perf_counter() - started
        backbone = part.spec.get("model") or (part.config.model.backbone if part.config else None)
        record = {"part": part.name, "key": key, "kind": part.kind, "dataset": part.dataset,
                  "describe": part.describe, "spec": part.spec, "result": result,
                  "provenance": {"command": ctx.command, "date": now(), "seconds": round(seconds, 2),
                                 "hardware": hardware(), "backbone": backbone_source(backbone) if backbone else None,
                                 "git": revision,
                                 "config": part.config.to_dict() if part.config else None}}
        write_json(part_file(ctx, part), record)
        status[part.name] = {"status": "ran"}
        log(f"[{ctx.name}] {part.name}: done in {seconds:.1f} s")
    return status, errors


def records(ctx: Context, parts: list[Part]) -> dict[str, dict]:
    """Current part records (finished parts only), by part name."""
    out = {}
    for part in parts:
        rec = finished_result(ctx, part, part_key(part))
        if rec is not None:
            out[part.name] = rec
    return out
