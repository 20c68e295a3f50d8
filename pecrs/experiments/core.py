"""The machinery every paper experiment shares: resumable parts, provenance, result files.

An experiment is a list of *parts*. A part is one training run or one evaluation (of a trained
model, or of a model-free baseline), small enough
for one GPU call of under 10 minutes (a training part stops at `train.max_train_minutes` and
resumes on the next call). Each finished part writes

    DIR/NAME/parts/<part>.json     {"part", "key", "kind", "dataset", "spec", "result", "provenance"}

and a later invocation skips it while its `key` still matches (the key hashes everything that
decides the part's numbers: the config, the dataset files' sizes, the part's own settings; not
the time budget, checkpointing cadence or batch size of evaluation). Changing an override that
matters therefore re-runs the parts it affects; the old file is overwritten.

Trained models live in DIR/runs/<dataset>-<hash>/ (a `pecrs train` run folder), addressed
by the hash of their training config, so experiments that need the same model (the
full model of Table 5, the model of Table 6, the M_train=150 model of Figure 3, ...) train it
once. A run is finished when `experiment_done.json` is in it; until then evaluations of it are
"blocked", unless `accept_partial` is set (then they use best/, else last/, and say so).

After the parts that were asked for have run, `DIR/NAME/result.json` (every number, each
part's status and provenance) and `DIR/NAME/table.md` (our numbers beside the paper's) are
rewritten from all the part files there, and figures are drawn as PNGs. A number that was not
measured is never shown: its cell reads "not run".
"""
from __future__ import annotations

import copy
import datetime as _dt
import fnmatch
import functools
import gc
import hashlib
import json
import sys
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import RunConfig

RESULT_FILE = "result.json"
TABLE_FILE = "table.md"
PARTS_DIR = "parts"
RUNS_DIR = "runs"
DONE_FILE = "experiment_done.json"

NOT_RUN = "not run"
UNDEFINED = "n/a"          # measured, but undefined on its input (e.g. no sample with a target)

# Settings that never change a part's numbers: left out of every key.
_IGNORED_TRAIN_KEYS = ("max_train_minutes", "checkpoint_every", "eval_batch_size")
# ...and, for a training run, the settings only evaluation reads.
_EVAL_ONLY_TRAIN_KEYS = ("decoding", "eval_generate", "test_split")

DATASET_LABELS = {"inspired": "INSPIRED", "redial": "ReDial-subset"}


class Blocked(Exception):
    """The part cannot run yet: the model it evaluates has not finished training."""


class NotAvailable(Exception):
    """The part cannot run on this machine (e.g. a backbone that is not installed)."""


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

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def runs(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def primary(self) -> str:
        return next(iter(self.configs))


# ---- configs -------------------------------------------------------------------------------------

def copy_config(config: RunConfig, **changes) -> RunConfig:
    """A deep copy with `section.key` changes applied, e.g. {"train.alpha": 0.0}."""
    new = RunConfig.from_dict(copy.deepcopy(config.to_dict()))
    for dotted, value in changes.items():
        section, _, name = dotted.partition(".")
        target = getattr(new, section)
        if not hasattr(target, name):
            raise ValueError(f"unknown config key {dotted}")
        setattr(target, name, copy.deepcopy(value))
    return new


def dataset_key(config: RunConfig) -> str:
    name = Path(config.train.dataset).name.lower()
    for key in DATASET_LABELS:
        if key in name:
            return key
    return name or "dataset"


def dataset_label(config: RunConfig) -> str:
    """INSPIRED, ReDial-subset (only the train subset is here), ReDial (full release), or the folder name."""
    key = dataset_key(config)
    if key == "redial":
        folder = Path(config.train.dataset)
        if (folder / "train_data.jsonl").is_file() or (folder / "official" / "train_data.jsonl").is_file():
            return "ReDial"
    return DATASET_LABELS.get(key, Path(config.train.dataset).name)


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> dict:
    from ..loaders import _redial_split_files, detect_format

    folder = Path(path)
    try:
        fmt = detect_format(folder)
    except ValueError:
        return {"path": path}
    if fmt == "jsonl":
        files = [folder / "items.jsonl"] + [p for p in folder.glob("*.jsonl") if not p.name.startswith("items")]
    elif fmt == "redial":
        official = folder / "official" if (folder / "official").is_dir() else folder
        items = folder / "items.jsonl" if (folder / "items.jsonl").is_file() else official / "movies_with_mentions.csv"
        files = [items, folder / "items_sources.jsonl", *_redial_split_files(folder).values()]
    else:
        official = folder / "official" if (folder / "official").is_dir() else folder
        files = [folder / "items.jsonl", folder / "items_sources.jsonl", *official.glob("*.tsv")]
    h = hashlib.sha1()
    for f in sorted({f for f in files if f.is_file()}, key=lambda f: str(f.relative_to(folder))):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"name": folder.name, "format": fmt, "sha1": h.hexdigest()[:16]}


def dataset_fingerprint(path: str) -> dict:
    """The dataset's name, format and a hash of the files its loader reads: the same data copied
    elsewhere (the GPU machine's .devdata/) gives the same fingerprint, other data another."""
    folder = Path(path)
    if not folder.is_dir():
        return {"path": str(path)}
    stamp = tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()))
    return _fingerprint(str(folder.resolve()), stamp)


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _normalized(config: RunConfig, drop: tuple[str, ...]) -> dict:
    d = config.to_dict()
    d["train"]["dataset"] = dataset_fingerprint(config.train.dataset)
    for k in drop:
        d["train"].pop(k, None)
    return d


def train_key(config: RunConfig) -> str:
    return digest(_normalized(config, _IGNORED_TRAIN_KEYS + _EVAL_ONLY_TRAIN_KEYS))


def part_key(part: Part) -> str:
    cfg = _normalized(part.config, _IGNORED_TRAIN_KEYS) if part.config is not None else None
    return digest({"kind": part.kind, "train": part.train_key, "config": cfg, "spec": part.spec})


# ---- provenance ----------------------------------------------------------------------------------

def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
    return info


def hardware_summary(hw: dict | None) -> str:
    if not hw:
        return "unknown"
    if hw.get("cuda"):
        return f"{hw.get('gpu')} (x{hw.get('gpu_count', 1)})"
    return f"CPU, {hw.get('torch_threads')} torch thread(s) of {hw.get('cpu_count')} cores"


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+dirty" if dirty else "")) if rev else None


def backbone_source(name: str) -> dict:
    out = {"name": name}
    if name == "smollm2-135m-instruct" and os.environ.get("PECRS_SMOLLM2_GGUF"):
        out["gguf"] = os.path.basename(os.environ["PECRS_SMOLLM2_GGUF"])
    if name == "gemma-3-270m" and os.environ.get("PECRS_GEMMA3_GGUF"):
        out["gguf"] = os.path.basename(os.environ["PECRS_GEMMA3_GGUF"])
    return out


def clean_json(obj):
    """NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists, recursively."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            return obj
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(obj), indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---- training ------------------------------------------------------------------------------------

def run_dir(ctx: Context, config: RunConfig) -> Path:
    """The run folder of a training config: named by dataset and config hash only, so every
    experiment that needs the same model finds the same folder."""
    return ctx.runs / f"{dataset_key(config)}-{train_key(config)}"


def training_part(ctx: Context, name: str, config: RunConfig, describe: str = "") -> Part:
    folder = run_dir(ctx, config)
    return Part(name=name, kind="train", run=lambda: ensure_trained(ctx, config, folder), spec={},
                dataset=dataset_key(config), config=config, train_key=train_key(config),
                describe=describe or f"train on {dataset_label(config)}")


def ensure_trained(ctx: Context, config: RunConfig, folder: Path) -> dict:
    """Train (or resume) the run in `folder`; return its summary. Stops at max_train_minutes:
    then raises `InProgress` so the part stays unfinished and the next call resumes it."""
    done = read_json(folder / DONE_FILE)
    if done is not None:
        return {**done, "reused": True}
    from ..train import train

    started = time.perf_counter()
    state = train(config, folder, progress=ctx.progress)
    seconds = time.perf_counter() - started
    _free_memory()
    info = {"run_dir": folder.name, "epochs": config.train.epochs, "epoch": state["epoch"],
            "batch": state.get("batch", 0), "global_step": state["global_step"], "best": state["best"],
            "best_epoch": state["best_epoch"], "seconds_last_call": round(seconds, 2),
            "hardware": hardware_summary(hardware()), **batch_timing(folder, config)}
    if state.get("stopped_early") or state["epoch"] < config.train.epochs:
        raise InProgress(info)
    info["finished"] = True
    write_json(folder / DONE_FILE, info)
    return info


def training_progress(ck: dict) -> str:
    """How far a checkpoint's training got: "2/20 epochs", or "812 batches into epoch 1/20"."""
    epoch, epochs, batch = int(ck.get("epoch") or 0), ck.get("epochs"), int(ck.get("batch") or 0)
    return f"{batch} batches into epoch {epoch + 1}/{epochs}" if batch else f"{epoch}/{epochs} epochs"


def training_in_progress(ctx: Context, config: RunConfig) -> dict | None:
    """What a run folder's mid-training checkpoint says (epoch, batch, time per batch), when the
    run has one and has not finished; else None."""
    folder = run_dir(ctx, config)
    meta = read_json(folder / "last" / "pecrs_config.json")
    if meta is None or (folder / DONE_FILE).is_file():
        return None
    trainer = meta.get("trainer", {})
    return {"run_dir": folder.name, "epoch": trainer.get("epoch"), "batch": trainer.get("batch"),
            "epochs": config.train.epochs, **batch_timing(folder, config)}


class InProgress(Exception):
    """A training part stopped at its time budget; rerun to resume."""

    def __init__(self, info: dict):
        super().__init__(f"stopped at max_train_minutes: epoch {info['epoch']}/{info['epochs']}, "
                         f"batch {info['batch']} of the next; rerun to resume")
        self.info = info


def batch_timing(folder: Path, config: RunConfig) -> dict:
    """Seconds per training batch over every call so far: the summed training-loop seconds of
    metrics.jsonl (each epoch record and each time-budget stop covers one stretch of batches) over
    the batches run (optimizer steps x grad_accum). Dev evaluation is not in those seconds."""
    seconds, steps = 0.0, 0
    path = folder / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            seconds += float(rec.get("seconds") or 0.0)
            if "global_step" in rec:
                steps = max(steps, int(rec["global_step"]))
    state_file = folder / "last" / "trainer_state.pt"
    if state_file.is_file():
        import torch

        try:
            # weights_only: a run folder from elsewhere must not execute pickled code.
            state = torch.load(state_file, map_location="cpu", weights_only=True)["state"]
            steps = max(steps, int(state["global_step"]))
        except Exception:  # noqa: BLE001 - timing is informative only
            pass
    batches = steps * max(config.train.grad_accum, 1)
    return {"train_seconds": round(seconds, 2), "train_batches": batches,
            "seconds_per_batch": round(seconds / batches, 4) if batches else None}


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ---- loading a trained model for evaluation -------------------------------------------------------

_MODEL_CACHE: dict = {}
_SETUP_CACHE: dict = {}


def checkpoint(ctx: Context, train_config: RunConfig) -> tuple[Path, dict]:
    """The checkpoint an evaluation uses and what is known about its training."""
    folder = run_dir(ctx, train_config)
    done = read_json(folder / DONE_FILE)
    best, last = folder / "best", folder / "last"
    if done is not None:
        ckpt = best if (best / "pecrs_config.json").is_file() else last
        return ckpt, {"run_dir": folder.name, "checkpoint": ckpt.name, "finished": True,
                      "best_epoch": done.get("best_epoch"), "epochs": done.get("epochs")}
    if not ctx.accept_partial:
        raise Blocked(f"its model ({folder.name}) has not finished training; run its training part first "
                      "(or pass --accept-partial to evaluate the checkpoint so far)")
    for ckpt in (best, last):
        if (ckpt / "pecrs_config.json").is_file():
            meta = read_json(ckpt / "pecrs_config.json") or {}
            trainer = meta.get("trainer", {})
            return ckpt, {"run_dir": folder.name, "checkpoint": ckpt.name, "finished": False,
                          "epoch": meta.get("epoch", trainer.get("epoch")), "batch": meta.get("batch", trainer.get("batch")),
                          "epochs": train_config.train.epochs}
    raise Blocked(f"{folder.name} has no checkpoint yet; run its training part first")


def eval_setup(ckpt: Path, config: RunConfig):
    """`pecrs.setup.Setup` for evaluating `ckpt` with `config` (item fields, dataset, eval slice),
    the model on the GPU when there is one. The model and the last two setups stay cached in the
    process, so consecutive parts on the same checkpoint load it once."""
    from ..backbone import default_device
    from ..pretrained import load_pretrained
    from ..setup import prepare

    stamp = (ckpt / "heads.safetensors").stat().st_mtime if (ckpt / "heads.safetensors").exists() else 0
    mkey = (str(ckpt.resolve()), stamp, config.model.backbone)
    if mkey not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _SETUP_CACHE.clear()
        _free_memory()
        model, _ = load_pretrained(ckpt, backbone=config.model.backbone)
        _MODEL_CACHE[mkey] = model.to(default_device()).eval()
    model = _MODEL_CACHE[mkey]
    skey = (mkey, json.dumps(config.to_dict(), sort_keys=True))
    if skey not in _SETUP_CACHE:
        while len(_SETUP_CACHE) >= 2:
            _SETUP_CACHE.pop(next(iter(_SETUP_CACHE)))
        # Status lines and the catalog-encoding bar on a terminal (minutes on a CPU).
        _SETUP_CACHE[skey] = prepare(config, model=model, progress=sys.stderr.isatty())
    return _SETUP_CACHE[skey]


def clear_caches() -> None:
    _MODEL_CACHE.clear()
    _SETUP_CACHE.clear()
    _free_memory()


def eval_part(ctx: Context, name: str, train_config: RunConfig, body: Callable, spec: dict,
              config: RunConfig | None = None, describe: str = "") -> Part:
    """A part that evaluates the model trained with `train_config`: body(setup) -> result. `config`
    (default: the training config) sets what evaluation reads: item fields, split, M_inference..."""
    config = config or train_config

    def run():
        ckpt, info = checkpoint(ctx, train_config)
        setup = eval_setup(ckpt, config)
        result = body(setup)
        result["checkpoint"] = info
        return result

    return Part(name=name, kind="eval", run=run, spec=spec, dataset=dataset_key(config), config=config,
                train_key=train_key(train_config), describe=describe)


# ---- running an experiment ----------------------------------------------------------------------

def select(parts: list[Part], patterns: list[str] | None) -> list[Part]:
    if not patterns:
        return list(parts)
    chosen, names = [], [p.name for p in parts]
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
        if not data:
            raise ValueError(f"{f}: not a result.json")
        for name, entry in (data.get("parts") or {}).items():
            rec = entry.get("record")
            part = by_name.get(name)
            if not rec or part is None or rec.get("key") != part_key(part):
                continue
            if finished_result(ctx, part, rec["key"]) is None:
                write_json(part_file(ctx, part), rec)
                restored.append(name)
    return restored


def run_parts(ctx: Context, parts: list[Part], chosen: list[Part], log=print) -> tuple[dict, list[str]]:
    """Run the chosen parts in order; return ({part: status}, errors)."""
    status, errors = {}, []
    chosen_names = {p.name for p in chosen}
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
                                 "git": git_revision(),
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


def provenance_lines(recs: dict[str, dict]) -> list[str]:
    """One markdown bullet per distinct (hardware, backbone) with its dates and parts."""
    groups: dict[tuple, list] = {}
    for name, rec in recs.items():
        prov = rec.get("provenance") or {}
        bb = (prov.get("backbone") or {}).get("name", "?") if rec.get("kind") != "baseline" else None
        k = (hardware_summary(prov.get("hardware")), bb)
        groups.setdefault(k, []).append((prov.get("date", "?"), name, prov.get("git")))
    lines = []
    for (hw, bb), items in groups.items():
        dates = sorted(d for d, _, _ in items)
        gits = sorted({g for _, _, g in items if g})
        span = dates[0][:10] if dates[0][:10] == dates[-1][:10] else f"{dates[0][:10]} to {dates[-1][:10]}"
        lines.append(f"- {hw}; {f'backbone `{bb}`' if bb else 'no model'}; {span}; git {', '.join(gits) or '?'}; parts: "
                     + ", ".join(n for _, n, _ in items))
    return lines or ["- nothing measured yet"]


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x):
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(cell(h) for h in headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt(value, kind: str = "num", measured: bool = True) -> str:
    """A table cell: `value` in the paper's scale, "not run" when not measured, "n/a" when undefined.
    kind: "pct" (a fraction printed x100, 1 decimal), "pct2" (x100, 2 decimals), "num2", "num3",
    "int", "sec"."""
    if not measured:
        return NOT_RUN
    if value is None:
        return UNDEFINED
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "pct2":
        return f"{100 * value:.2f}"
    if kind == "int":
        return f"{int(value)}"
    if kind == "num3":
        return f"{value:.3f}"
    if kind == "sec":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return f"{value:.2f}"


def paper(value, spec: str = "") -> str:
    """A paper cell, printed with the paper's decimals (`spec`: "int" or a format such as ".2f");
    "—" where the paper has no number."""
    if value is None:
        return "—"
    if spec == "int":
        return str(int(value))
    return format(value, spec) if spec else str(value)


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

