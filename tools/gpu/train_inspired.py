"""The one-session GPU run of issue 11 B, call 2: backbone, probe, train, select on dev, test, export.

Run by tools/gpu/train_inspired.sh (which sources tools/gpu/env.sh and joins the GGUF first);
docs/gpu.md has the session's plan and the exact device calls. Every stage runs in its own
process with a hard timeout taken from one budget for the whole call (CALL_BUDGET_S, counted
from PECRS_CALL_T0, the moment the shell script started), and result.json is rewritten after
each stage, so a stage that fails or overruns costs its own result only.

Stages and their budget (seconds of the call; defaults for the GPU, SMOKE=1 shrinks them):
  env        versions, GPU, git revision                                      ~1
  backbone   GGUF -> cached float model (once; every later process loads it)   ~30, at most BACKBONE_LIMIT_S
  probe      benchmarks/gpu_probe.py: step mode x batch size (combinations
             PROBE_BUDGET_S=60) + setup + one dev evaluation                  ~90, at most PROBE_LIMIT_S
  train      the variants (VARIANTS), one after the other, in what is left once the reserves below
             are set aside; epochs planned from the probe's figures so that each finishes inside
             its share (complete linear schedule), train.max_train_minutes as the guard
  test       `pecrs evaluate BEST --json` with generation; if it fails or overruns, recall and
             perplexity only (--no-generate)                                 EVAL_RESERVE_S=120
  export     `pecrs export RUN RUNS/shipped`, packed into $OUT/shipped.tar at once (skipped with a
             message when the command is absent: the best checkpoint comes back as best.tar)
                                                                              EXPORT_RESERVE_S=30
  dev-evals  the ship rule's dev measurements (docs/gpu.md), on this GPU, in the time left over
             only (planned from nothing, so never taken from training): `pecrs evaluate --split dev`
             of the export and of the package's default model (DEV_BASELINE) with the same
             settings, whole split, replies included, then the export with mentioned items
             excluded; each ~40 s on an H200, skipped when less than DEV_EVAL_MIN_S is left
  end        result.json, file checks                                        END_RESERVE_S=15

Variants: NAME=CONFIG pairs; the default trains the authors' loss balance (configs/inspired-gpu.yaml)
and the paper's (configs/inspired-gpu-paper.yaml). When the training window cannot give every
variant MIN_EPOCHS_PER_VARIANT epochs, the last variants are dropped (the first is kept). The
variant with the best dev score (mean of R@1, R@10, R@50, what `pecrs train` selects on) is
evaluated on test and exported; test never chooses anything.

$OUT gets at most 8 files (the device tool's limit), each under 16 MiB: result.json, run.log,
eval_test.json, dev_*.json (the dev evaluations), dev_predictions.tar and shipped.tar (or
shipped-1.tar, shipped-2.tar, ... of < 15 MiB each). $OUT holds a usable model from the selection on,
so a call killed at the tool's limit loses no more than the stage it was in: the selected
checkpoint is packed into $OUT (best.tar, best-1.tar, ...) right after the selection, replaced by
shipped.tar once the export is done, and the dev evaluations read the export and write their
predictions outside $OUT. A call killed before the selection leaves the checkpoints in RUNS, with a
copy of result.json and run.log: `train_inspired.py --salvage` (train_inspired.sh --salvage, a call
of its own at once on the warm machine) packs the best of them into $OUT (docs/gpu.md).

Environment: OUT, DATA (.devdata/inspired), CALL_BUDGET_S (570), PROBE_BUDGET_S (60),
PROBE_LIMIT_S (150), BACKBONE_LIMIT_S (120), EVAL_RESERVE_S (120), EXPORT_RESERVE_S (30),
END_RESERVE_S (15), VARIANTS, MIN_EPOCHS_PER_VARIANT (3), MAX_EPOCHS (20), HARD_PASS_S (5: a hard-
negative variant's recall pass per epoch), BATCH and STEP_MODE
(force them instead of the probe's choice), EVAL_BATCH (256), EVAL_ARGS (more `pecrs evaluate`
options), RUNS (runs/gpu-inspired), PROBE_FROM (a stored probe JSON to plan from instead of probing,
e.g. tools/gpu/probe_h200.json: its time goes to training),
DEV_BASELINE (the model the export is compared with on dev: `inspired`, the package's default;
SMOKE: the export itself), DEV_EVAL_MIN_S (60; DEV_RECALL_MIN_S, 35, for the recall-only one),
DEV_EVAL_LIMIT_S (150), DEV_NO_REPEAT_NGRAM (3, the shipped default's setting). Those set for the call
are recorded in result.json ("env"); a reused probe says where it came from ("probe.reused_from").
Without CUDA the driver refuses to train (the GPU configs on a CPU would only use up the call),
SMOKE=1 (configs/tiny.yaml with each variant's loss settings and SMOKE_OVERRIDES, tiny budgets: the
CPU smoke test, tests/test_gpu_run.py).
"""
from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MAX_FILE = 16 * 2**20
MAX_FILES = 8
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
# What tells the GPU configs apart, carried into the smoke run's tiny config: the loss balance and
# the negatives (hard ones capped to fit the smoke run's m_train of 8, and from its only epoch).
VARIANT_KEYS = ("alpha", "beta", "gamma", "loss_normalization", "rerank_temperature", "label_smoothing",
                "hard_negatives", "hard_negative_depth")
SMOKE_HARD_NEGATIVES = 4
DEFAULT_VARIANTS = "authors=configs/inspired-gpu.yaml paper=configs/inspired-gpu-paper.yaml"
ENV_KEYS = ("CALL_BUDGET_S", "VARIANTS", "PROBE_FROM", "MAX_EPOCHS", "MIN_EPOCHS_PER_VARIANT", "BATCH",
            "STEP_MODE", "EVAL_BATCH", "EVAL_ARGS", "DEV_BASELINE", "DEV_EVAL_MIN_S", "DEV_RECALL_MIN_S",
            "DEV_EVAL_LIMIT_S", "DEV_NO_REPEAT_NGRAM", "PROBE_BUDGET_S", "EVAL_RESERVE_S", "EXPORT_RESERVE_S",
            "END_RESERVE_S", "HARD_PASS_S", "DATA", "RUNS")
SMOKE = bool(os.environ.get("SMOKE"))
# the smoke run's sizes on top of configs/tiny.yaml (a few seconds per process on 2 cores)
SMOKE_OVERRIDES = ("train.max_train_samples=32 train.max_eval_samples=12 train.m_train=8 inference.m_inference=32 "
                   "model.context_max_tokens=64 model.response_max_tokens=12")


def env_float(name: str, default: float, smoke: float | None = None) -> float:
    value = os.environ.get(name)
    if value:
        return float(value)
    return smoke if (SMOKE and smoke is not None) else default


class Run:
    """The call's clock, log and result file."""

    def __init__(self, out: Path):
        self.t0 = float(os.environ.get("PECRS_CALL_T0") or time.time())
        self.budget = env_float("CALL_BUDGET_S", 570, 300)
        self.out = out
        self.mirror: Path | None = None   # RUNS, once it exists: result.json and run.log again (--salvage)
        out.mkdir(parents=True, exist_ok=True)
        self.log_files = [(out / "run.log").open("a", encoding="utf-8")]
        self.result: dict = {"kind": "pecrs inspired gpu run (issue 11 B)", "smoke": SMOKE,
                             "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.t0)),
                             "budget": {}, "timeline": []}

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {text}"
        print(line, flush=True)
        for f in self.log_files:
            f.write(line + "\n")
            f.flush()

    def mirror_into(self, folder: Path) -> None:
        """Keep result.json and run.log in `folder` (RUNS) too, for `--salvage` after a kill."""
        self.mirror = folder
        self.log_files.append((folder / "run.log").open("a", encoding="utf-8"))

    def save(self) -> None:
        """result.json, written whole each time (a temporary file outside $OUT, then renamed in)."""
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pecrs-result-{os.getpid()}.json"
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        if self.mirror is not None:      # copied, then renamed: a kill mid-copy leaves the last whole one
            shutil.copy(tmp, self.mirror / "result.json.part")
            os.replace(self.mirror / "result.json.part", self.mirror / "result.json")
        shutil.move(str(tmp), self.out / "result.json")

    def stage(self, name: str, status: str, started: float, **extra) -> None:
        self.result["timeline"].append({"stage": name, "status": status, "start_s": round(started - self.t0, 1),
                                        "seconds": round(time.time() - started, 1), **extra})
        self.log(f"stage {name}: {status} ({time.time() - started:.1f} s)")
        self.save()

    def call(self, name: str, cmd: list[str], timeout: float, quiet=None) -> tuple[int | None, list[str]]:
        """Run `cmd` with a hard timeout, its output (Warning lines, and lines `quiet` matches,
        dropped) into the log as it comes. Returns (exit status or None when it timed out, the
        output lines)."""
        timeout = max(1.0, timeout)
        self.log(f"$ {' '.join(cmd)}   (timeout {timeout:.0f} s)")
        lines: list[str] = []
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + timeout
        fd = proc.stdout.fileno()
        pending = b""

        def emit(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                return
            lines.append(line)
            if "Warning" in line or line.startswith("  warnings.warn") or "it/s]" in line or (quiet and quiet(line)):
                return
            self.log(f"  {name}| {line[:2000]}")

        # Raw reads of what is there (never a blocking readline: a progress bar without a newline,
        # or a child that keeps the pipe open after the process exits, must not outlast the timeout).
        timed_out = eof = False
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                timed_out = True
                break
            exited = proc.poll() is not None
            if eof:                     # the pipe closed: wait for the exit
                if exited:
                    break
                time.sleep(min(0.2, remaining))
                continue
            ready, _, _ = select.select([fd], [], [], 0 if exited else min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    eof = True
                    continue
                pending += chunk
                *complete, pending = re.split(rb"[\r\n]", pending)
                for raw in complete:
                    emit(raw)
            elif exited:                # exited and drained (a child may still hold the pipe)
                break
        emit(pending)
        if timed_out:
            self.log(f"  {name}: TIMED OUT after {timeout:.0f} s, stopping it")
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=10)
            except Exception:
                os.killpg(proc.pid, 9)
                proc.wait()
            return None, lines
        proc.wait()
        try:                            # what it left behind (compile workers, say)
            os.killpg(proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode, lines


def json_lines(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file; a line cut off by a kill mid-write is left out."""
    if not path.is_file():
        return []
    return json_lines(path.read_text().splitlines())


def versions() -> dict:
    info = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "accelerate", "triton", "pecrs"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    return info


def gpu_info() -> dict:
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        cuda = re.search(r"CUDA Version:\s*([\d.]+)", subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                                                                       timeout=30).stdout)
    except (OSError, subprocess.TimeoutExpired):
        return {"gpu": None, "kind": "cpu"}
    if not text:
        return {"gpu": None, "kind": "cpu"}
    name, memory, driver = [x.strip() for x in text.splitlines()[0].split(",")]
    return {"gpu": name, "memory": memory, "driver": driver, "cuda_driver": cuda.group(1) if cuda else None,
            "kind": "h200" if "H200" in name else "h100" if "H100" in name else name}


def torch_sees_cuda() -> bool:
    """Whether torch, in a process of its own (the driver holds no CUDA context), finds a GPU."""
    try:
        return subprocess.run([sys.executable, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"],
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def git_revision() -> dict:
    """From .devdata/revision.txt (written here by --prepare: .git does not travel), else git."""
    path = REPO / ".devdata" / "revision.txt"
    if path.is_file():
        return dict(x.split("=", 1) for x in path.read_text().split() if "=" in x)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"revision": rev or None, "dirty": str(bool(dirty)).lower()}
    except OSError:
        return {"revision": None}


def parse_variants(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split():
        name, _, config = item.partition("=")
        if not name or not config or not NAME_OK.match(name):
            raise SystemExit(f"VARIANTS: expected NAME=CONFIG pairs, got {item!r}")
        out.append((name, config))
    return out


def variant_train(config: str) -> dict:
    """The train section of a variant's config file (the repository's path), {} if it has none."""
    return (yaml.safe_load((REPO / config).read_text()) or {}).get("train") or {}


def variant_command(config: str, data: str, smoke: bool) -> tuple[str, list[str]]:
    """The config file and overrides that train a variant: the variant's own file on a GPU;
    in the smoke run, configs/tiny.yaml with the variant's VARIANT_KEYS settings."""
    if not smoke:
        return config, [f"train.dataset={data}"]
    train = variant_train(config)
    own = {k: train[k] for k in VARIANT_KEYS if k in train}
    if own.get("hard_negatives"):
        own["hard_negatives"] = min(own["hard_negatives"], SMOKE_HARD_NEGATIVES)
        own["hard_negatives_from_epoch"] = 1   # the smoke run trains one epoch
    return "configs/tiny.yaml", [f"train.dataset={data}", "train.compile_backend=eager",
                                 *(f"train.{k}={v}" for k, v in own.items()),
                                 *os.environ.get("SMOKE_OVERRIDES", SMOKE_OVERRIDES).split()]


def first_hard_epoch(config: str, epochs: int) -> list[str]:
    """An override for a hard-negative variant planned shorter than its first hard epoch
    (`train.hard_negatives_from_epoch`, which the config check refuses past the last epoch): its
    last epoch draws them, so that a short window still trains the variant it names."""
    train = variant_train(config)
    if train.get("hard_negatives") and train.get("hard_negatives_from_epoch", 2) > epochs:
        return [f"train.hard_negatives_from_epoch={epochs}"]
    return []


def plan_schedule(run: Run, probe: dict | None, variants: list, config: dict, smoke: bool) -> dict:
    """Batch, step mode, epochs and deadline of each variant, from the probe and the time left."""
    t = config["train"]
    chosen = (probe or {}).get("chosen")
    combos = (probe or {}).get("combos") or []
    source = "probe"
    if chosen:
        batch, mode = chosen["batch_size"], chosen["mode"]
        step_s = chosen["ms_per_step"] / 1000
        compile_s = chosen.get("first_step_s") or 0.0
        compiled_failed = any(c.get("fell_back") or c["status"] == "error" for c in combos if c["mode"] != "eager")
        compiled_untried = all(c["status"] in ("skipped", "over_budget") for c in combos if c["mode"] != "eager")
        if mode == "eager" and compiled_untried and not compiled_failed and not smoke and any(
                c["mode"] != "eager" for c in combos):
            # The compiled modes did not fit the probe's budget, none failed: train with the GPU
            # default (CUDA graphs, falling back to eager by itself); plan with eager's figures.
            mode, source = "auto", "probe (eager figures; compiled modes over the probe's budget: train.step_mode auto)"
            compile_s = max([c.get("seconds", 0) for c in combos if c["status"] == "over_budget"], default=60.0)
    else:
        batch, mode, step_s, compile_s, source = t["batch_size"], "auto", None, 60.0, "config (no probe result)"
    if os.environ.get("BATCH"):
        batch, source = int(os.environ["BATCH"]), source + "; BATCH forced"
    if os.environ.get("STEP_MODE"):
        mode, source = os.environ["STEP_MODE"], source + "; STEP_MODE forced"
    if chosen and batch != chosen["batch_size"]:
        same = [c for c in combos if c["status"] == "ok" and c["batch_size"] == batch]
        step_s = min((c["ms_per_step"] for c in same), default=None)
        step_s = step_s / 1000 if step_s else None
    train_samples = (probe or {}).get("settings", {}).get("train_samples") or env_float("TRAIN_SAMPLES", 8152)
    steps_per_epoch = math.ceil(train_samples / batch)
    # per-epoch cost: the steps (10% margin), the dev evaluation, two checkpoint saves
    epoch_s = (steps_per_epoch * step_s * 1.1 if step_s else env_float("EPOCH_GUESS_S", 120, 20)) \
        + ((probe or {}).get("dev_eval_s") or env_float("DEV_EVAL_GUESS_S", 15, 2)) + env_float("SAVE_S", 3, 1)
    # a variant with hard negatives starts each epoch with a recall pass over the training samples
    # that have a target, which the probe does not time (~2 s on an H200, estimated: docs/gpu.md)
    hard_pass_s = env_float("HARD_PASS_S", 5, 1) if any(variant_train(c).get("hard_negatives") for _, c in variants) \
        else 0.0
    epoch_s += hard_pass_s
    # per-process cost before the loop: interpreter and imports, the model and catalog (the probe's setup)
    setup_s = ((probe or {}).get("setup_s") or 20.0) + env_float("IMPORT_S", 10, 8)
    reserves = sum(run.result["budget"][k] for k in ("eval_reserve_s", "export_reserve_s", "end_reserve_s"))
    window = run.left() - reserves
    min_epochs = int(env_float("MIN_EPOCHS_PER_VARIANT", 3, 1))
    max_epochs = int(env_float("MAX_EPOCHS", 20, 1))

    def epochs_for(share: float) -> int:
        return int((share - setup_s - compile_s) // epoch_s)

    n = len(variants)
    while n > 1 and epochs_for(window / n) < min_epochs:
        n -= 1
    share = window / n
    epochs = max(1, min(max_epochs, epochs_for(share)))
    updates = epochs * steps_per_epoch
    warmup = max(1, round(0.05 * updates))    # the paper: 1 of 20 epochs
    minutes = max(0.05, (share - setup_s - 5) / 60)
    return {"source": source, "batch_size": batch, "step_mode": mode, "steps_per_epoch": steps_per_epoch,
            "estimated_s_per_step": round(step_s, 4) if step_s else None, "estimated_epoch_s": round(epoch_s, 1),
            "estimated_setup_s": round(setup_s, 1), "estimated_compile_s": round(compile_s, 1),
            "estimated_hard_pass_s": hard_pass_s,
            "training_window_s": round(window, 1), "variants_planned": [v[0] for v in variants[:n]],
            "variants_dropped": [v[0] for v in variants[n:]], "share_s": round(share, 1), "epochs": epochs,
            "updates": updates, "warmup_steps": warmup, "max_train_minutes": round(minutes, 2),
            "lr_rule": "lr x sqrt(batch / lr_reference_batch) (pecrs.step.scaled_lr)"}


def summarize_run(folder: Path, lines: list[str]) -> dict:
    records = read_jsonl(folder / "metrics.jsonl")
    epochs = [r for r in records if "epoch" in r and "stopped" not in r]
    stopped = [r for r in records if "stopped" in r]
    dev = [r for r in epochs if "dev_recall_mean" in r]
    best = max(dev, key=lambda r: r["dev_recall_mean"], default=None)
    printed = json_lines(lines)
    setup = next((x["setup"] for x in printed if "setup" in x), None)
    final = next((x for x in reversed(printed) if "output_dir" in x), None)
    return {"epochs_done": len(epochs), "stopped_by_deadline": bool(stopped), "setup": setup, "final": final,
            "best_dev_recall_mean": best["dev_recall_mean"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "best_dev": {k[4:]: v for k, v in best.items() if k.startswith("dev_")} if best else None,
            "has_best": (folder / "best" / "pecrs_config.json").is_file(),
            "has_last": (folder / "last" / "pecrs_config.json").is_file(),
            "step_mode_fallback": next((r["step_mode_fallback"] for r in records if r.get("step_mode_fallback")), None),
            "dev_curve": records}


def out_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def check_files(run: Run) -> dict:
    """Fit $OUT to what the device tool brings back: <= 8 files, < 16 MiB each, <= 2 folders
    down, plain names. dev_predictions/ becomes one tar, dropped if it would be a file too many
    (it is the least needed); the model came as tars already (`pack`)."""
    out = run.out
    predictions = out / "dev_predictions"
    if predictions.is_dir():
        if out_files(predictions):
            pack(predictions, out, "dev_predictions")
        shutil.rmtree(predictions)
    if len(out_files(out)) > MAX_FILES and (out / "dev_predictions.tar").is_file():
        (out / "dev_predictions.tar").unlink()
        run.log(f"dropped dev_predictions.tar: the device tool returns at most {MAX_FILES} files")
    problems = []
    files = out_files(out)
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, more than {MAX_FILES}")
    for f in files:
        rel = f.relative_to(out)
        if f.stat().st_size >= MAX_FILE:
            problems.append(f"{rel}: {f.stat().st_size} bytes, over 16 MiB")
        if len(rel.parts) > 3:
            problems.append(f"{rel}: more than 2 folders down")
        if not all(NAME_OK.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_', '-'")
    return {"files": {str(f.relative_to(out)): f.stat().st_size for f in files}, "problems": problems}


def pack(folder: Path, out: Path, name: str, limit: int = 15 * 2**20) -> list[str]:
    """`folder` as NAME.tar, or NAME-1.tar, NAME-2.tar, ... of under `limit` bytes each (files
    in order, a new tar when the next would not fit; one file over `limit` gets its own tar)."""
    groups, size = [[]], 0
    for f in out_files(folder):
        n = f.stat().st_size + 1024
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(f)
        size += n
    names = [f"{name}.tar"] if len(groups) == 1 else [f"{name}-{i + 1}.tar" for i in range(len(groups))]
    for tar_name, files in zip(names, groups):
        partial = out / f".{tar_name}.partial"      # renamed when whole: a kill never leaves half a NAME.tar
        with tarfile.open(partial, "w") as tar:
            for f in files:
                tar.add(f, arcname=str(Path(name) / f.relative_to(folder)))
        os.replace(partial, out / tar_name)
    return names


def dev_evaluations(run: Run, py: str, data: str, shipped: Path, end_reserve_s: float) -> dict:
    """The dev measurements a ship rule compares (docs/gpu.md, "The next session"), on this device
    with one set of settings for both models: float32, the whole dev split, replies with
    no_repeat_ngram DEV_NO_REPEAT_NGRAM. In order, each only while DEV_EVAL_MIN_S is left:
    dev_candidate (the export: dev recall and its replies), dev_baseline (DEV_BASELINE, the package's
    default model, the same way), dev_candidate_excl (the export's recall with the items a
    conversation mentions excluded). Each writes $OUT/<name>.json, and its per-sample predictions
    (for paired comparisons back here) RUNS/dev_predictions/<name>.jsonl, which the end packs into
    one dev_predictions.tar in $OUT (`check_files`); returns {name: status, seconds}."""
    baseline = os.environ.get("DEV_BASELINE") or (str(shipped) if SMOKE else "inspired")
    common = ["--split", "dev", "--dataset", data, "--json", "--dtype", "float32", "--no-ppl",
              "--batch-size", os.environ.get("EVAL_BATCH", "16" if SMOKE else "256"),
              "--no-repeat-ngram", os.environ.get("DEV_NO_REPEAT_NGRAM", "3"),
              *os.environ.get("EVAL_ARGS", "--max-samples 8" if SMOKE else "").split()]
    replies, recall_only = env_float("DEV_EVAL_MIN_S", 60, 5), env_float("DEV_RECALL_MIN_S", 35, 5)
    plan = (("dev_candidate", str(shipped), [], replies), ("dev_baseline", baseline, [], replies),
            ("dev_candidate_excl", str(shipped), ["--no-generate", "--exclude-mentioned"], recall_only))
    limit = env_float("DEV_EVAL_LIMIT_S", 150, 120)
    done = {}
    for name, model, extra, least in plan:
        left = run.left() - end_reserve_s
        if not (shipped / "pecrs_config.json").is_file():
            done[name] = {"status": "skipped: no export to evaluate"}
            continue
        if left < least:
            done[name] = {"status": f"skipped: {left:.0f} s left, under its minimum of {least:.0f} s"}
            run.log(f"{name}: {done[name]['status']}")
            continue
        started = time.time()
        target, predictions = run.out / f"{name}.json", shipped.parent / "dev_predictions" / f"{name}.jsonl"
        code, _ = run.call(name, [py, "-m", "pecrs.cli", "evaluate", model, *common, *extra, "--output", str(target),
                                  "--predictions", str(predictions)],
                           min(limit, left), quiet=lambda line: line.startswith("{"))
        ok = code == 0 and target.is_file()
        if ok:   # the examples stay in the file; result.json gets the figures
            figures = {k: v for k, v in json.loads(target.read_text()).items() if k not in ("examples", "genres")}
        else:
            target.unlink(missing_ok=True)
            predictions.unlink(missing_ok=True)
        done[name] = {"status": "ok" if ok else "failed" if code is not None else "timed out",
                      "seconds": round(time.time() - started, 1), "model": model, **(figures if ok else {})}
        run.save()
    return done


def salvage(out: Path, runs: Path) -> int:
    """After a call 2 killed at the tool's limit (docs/gpu.md): what RUNS holds into $OUT, at most 8
    files. The export when it was finished (shipped.tar), else the best checkpoint of the variants
    (best/ with the highest dev mean, else a last/) as best.tar, with the mirrored result.json
    (its selection and dev curve completed from the run folders, for adopt_run.py) and run.log."""
    out.mkdir(parents=True, exist_ok=True)
    mirrored = runs / "result.json"
    result = json.loads(mirrored.read_text()) if mirrored.is_file() else {"kind": "pecrs inspired gpu run (issue 11 B)"}
    if (runs / "run.log").is_file():
        shutil.copy(runs / "run.log", out / "run.log")
    from pecrs.pretrained import recover_checkpoint   # imports torch: only here

    found = []
    order = list(result.get("variants", {}))
    folders = sorted((p for p in runs.iterdir() if p.is_dir() and p.name not in ("shipped", "dev_predictions")),
                     key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name)) \
        if runs.is_dir() else []
    for folder in folders:     # the variants in the call's order: a tie goes to the first, as in the call
        summary = summarize_run(folder, [])
        # a kill between a save's two renames leaves NAME.tmp / NAME.old: made whole first
        kind = next((k for k in ("best", "last") if recover_checkpoint(folder / k)), None)
        if kind:
            found.append((kind == "best", summary["best_dev_recall_mean"] or -1.0, folder.name, kind, summary))
    note = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if found:
        _, _, name, kind, summary = max(found, key=lambda x: x[:2])
        variant = result.setdefault("variants", {}).setdefault(name, {})
        variant.update({k: v for k, v in summary.items() if k not in ("setup", "final")})
        result.setdefault("selected", {"variant": name, "checkpoint": str(runs / name / kind),
                                       "partial": kind != "best", "best_epoch": summary["best_epoch"],
                                       "dev": summary["best_dev"],
                                       "why": "salvaged after the call was killed: the variants' best dev checkpoint"})
        name = result["selected"]["variant"]
        if (runs / name / "eval_test.json").is_file():
            shutil.copy(runs / name / "eval_test.json", out / "eval_test.json")
    if (runs / "shipped" / "pecrs_config.json").is_file():
        note["packed"] = pack(runs / "shipped", out, "shipped")
    elif found:
        selected = Path(result["selected"]["checkpoint"])
        note["packed"] = pack(selected if (selected / "pecrs_config.json").is_file() else runs / name / kind, out, "best")
    else:
        note["packed"] = []
        note["error"] = f"no checkpoint under {runs}"
    result["salvaged"] = note
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print("SALVAGE " + json.dumps({"selected": (result.get("selected") or {}).get("variant"), **note}))
    return 0 if note["packed"] else 1


def main() -> int:
    if sys.argv[1:] == ["--salvage"]:
        return salvage(Path(os.environ.get("OUT") or "/tmp/pecrs-out"), REPO / os.environ.get("RUNS", "runs/gpu-inspired"))
    run = Run(Path(os.environ.get("OUT") or "/tmp/pecrs-out"))
    try:
        return stages(run)
    except BaseException as error:   # a bug here must still leave result.json and the files checked
        import traceback

        run.log("DRIVER ERROR " + "".join(traceback.format_exception(error))[-3000:])
        run.result["error"] = f"driver: {type(error).__name__}: {error}"
        try:
            run.result["out_files"] = check_files(run)
        finally:
            run.save()
        return 1


def stages(run: Run) -> int:
    out = run.out
    data = os.environ.get("DATA", ".devdata/inspired")
    runs = REPO / os.environ.get("RUNS", "runs/gpu-inspired")
    variants = parse_variants(os.environ.get("VARIANTS", DEFAULT_VARIANTS))
    py = sys.executable
    budget = run.result["budget"]
    budget.update(call_budget_s=run.budget, backbone_limit_s=env_float("BACKBONE_LIMIT_S", 120, 60),
                  probe_budget_s=env_float("PROBE_BUDGET_S", 60, 10), probe_limit_s=env_float("PROBE_LIMIT_S", 150, 90),
                  eval_reserve_s=env_float("EVAL_RESERVE_S", 120, 45), export_reserve_s=env_float("EXPORT_RESERVE_S", 30, 25),
                  end_reserve_s=env_float("END_RESERVE_S", 15, 3), nogen_reserve_s=env_float("NOGEN_RESERVE_S", 40, 20))
    run.log(f"call budget {run.budget:.0f} s, {run.left():.0f} s left at the driver's start; OUT={out}; "
            f"variants {[v[0] for v in variants]}{'; SMOKE (tiny backbone, CPU)' if SMOKE else ''}")

    # ---- env ----
    started = time.time()
    run.result.update(device=gpu_info(), versions=versions(), git=git_revision(),
                      command=" ".join(sys.argv), env={k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)},
                      data=data, variants={n: {"config": c} for n, c in variants})
    if not SMOKE and not torch_sees_cuda():
        run.stage("env", "failed", started, device="cpu")
        run.result["error"] = "no GPU (torch.cuda.is_available() is False): the GPU configs would only use up the call on a CPU (SMOKE=1 is the CPU run)"
        run.result["out_files"] = check_files(run)
        run.save()
        return 1
    run.stage("env", "ok", started, device=run.result["device"].get("kind"))
    shutil.rmtree(runs, ignore_errors=True)   # a fresh run: epochs and warm-up are planned for this call
    runs.mkdir(parents=True)
    run.mirror_into(runs)
    run.save()

    primary_config, primary_overrides = variant_command(variants[0][1], data, SMOKE)
    base = yaml.safe_load((REPO / primary_config).read_text())

    # ---- backbone: the GGUF converted once (cached under PECRS_CACHE for every later process) ----
    started = time.time()
    backbone = base["model"]["backbone"]
    if backbone.startswith("tiny-"):     # seeded random test models: nothing to convert
        code = 0
        run.stage("backbone", "skipped (a built-in tiny model)", started, backbone=backbone)
    else:
        code, _ = run.call("backbone", [py, "-c", "import sys; from pecrs.backbone import load_backbone; "
                                                  "load_backbone(sys.argv[1]); print('backbone ready')", backbone],
                           min(budget["backbone_limit_s"], run.left()))
        run.stage("backbone", "ok" if code == 0 else "failed" if code is not None else "timed out", started,
                  backbone=backbone)
    if code != 0:
        run.result["error"] = "the backbone did not load: nothing can train (see run.log)"
        run.result["out_files"] = check_files(run)
        run.save()
        return 1

    # ---- probe ----
    started = time.time()
    probe_json = runs / "gpu_probe.json"
    cmd = [py, "benchmarks/gpu_probe.py", *primary_overrides, "--config", primary_config, "--dev-eval",
           "--budget-s", str(budget["probe_budget_s"]), "--json-out", str(probe_json)]
    if SMOKE:
        cmd += ["--quick", "--modes", "eager", "compile", "--compile-backend", "eager", "--batch-sizes", "2", "4",
                "--threads", "1"]
    reused = os.environ.get("PROBE_FROM")   # a probe measured in an earlier session on the same GPU kind
    if reused:
        run.log(f"probe: reusing {reused} instead of probing (saves the probe's time for training)")
        probe_json, code = REPO / reused, 0
    else:
        code, _ = run.call("probe", cmd, min(budget["probe_limit_s"], run.left() - 60),
                           quiet=lambda line: line[:1] in (" ", "{", "}"))   # its JSON: in result.json
    probe = json.loads(probe_json.read_text()) if code == 0 and probe_json.is_file() else None
    if probe:
        probe.pop("machine", None)
        if reused:   # measured in an earlier session: not this call's figures
            probe["reused_from"] = reused
    run.result["probe"] = probe or {"error": "the probe failed or timed out (see run.log); training uses the "
                                             "config's batch and train.step_mode auto"}
    run.stage("probe", "ok" if probe else "failed", started,
              chosen=(probe or {}).get("chosen") and {k: probe["chosen"][k] for k in ("mode", "batch_size")})

    # ---- schedule and training ----
    schedule = plan_schedule(run, probe, variants, base, SMOKE)
    run.result["schedule"] = schedule
    run.log("schedule: " + json.dumps({k: schedule[k] for k in ("batch_size", "step_mode", "epochs", "warmup_steps",
                                                                 "max_train_minutes", "variants_planned",
                                                                 "variants_dropped", "estimated_epoch_s")}))
    run.save()
    for name, config in variants:
        entry = run.result["variants"][name]
        if name not in schedule["variants_planned"]:
            entry["status"] = "not trained: the training window was too short for it (schedule.variants_dropped)"
            continue
        started = time.time()
        file, overrides = variant_command(config, data, SMOKE)
        reserves = budget["eval_reserve_s"] + budget["export_reserve_s"] + budget["end_reserve_s"]
        # the share plus a grace for the last epoch's evaluation; never into the reserves
        timeout = min(schedule["share_s"] + 30, run.left() - reserves)
        # a variant after one that overran: the deadline (a clean stop that saves last/) comes
        # before the hard timeout
        minutes = round(max(0.05, min(schedule["max_train_minutes"],
                                      (timeout - schedule["estimated_setup_s"] - 10) / 60)), 2)
        overrides += [f"train.batch_size={schedule['batch_size']}", f"train.step_mode={schedule['step_mode']}",
                      "train.static_shapes=true", f"train.epochs={schedule['epochs']}",
                      f"train.warmup_steps={schedule['warmup_steps']}", f"train.max_train_minutes={minutes}",
                      *([] if SMOKE else first_hard_epoch(config, schedule["epochs"]))]
        entry.update(config_file=file, overrides=overrides)
        code, lines = run.call(f"train-{name}", [py, "-m", "pecrs.cli", "train", file, *overrides,
                                                "--output-dir", str(runs / name), "--quiet"], timeout)
        entry.update(status="ok" if code == 0 else "failed" if code is not None else "timed out (killed)",
                     seconds=round(time.time() - started, 1), **summarize_run(runs / name, lines))
        run.stage(f"train-{name}", entry["status"], started, epochs_done=entry["epochs_done"],
                  best_dev_recall_mean=entry["best_dev_recall_mean"])

    # ---- selection on dev ----
    trained = [(n, e) for n, e in run.result["variants"].items() if e.get("has_best") or e.get("has_last")]
    with_best = [(n, e) for n, e in trained if e.get("has_best") and e.get("best_dev_recall_mean") is not None]
    if with_best:
        name, entry = max(with_best, key=lambda x: x[1]["best_dev_recall_mean"])
        ckpt, partial = runs / name / "best", False
        why = "best dev recall_mean (mean of R@1, R@10, R@50) over the variants' best checkpoints"
    elif trained:
        name, entry = trained[0]
        ckpt = runs / name / ("best" if entry.get("has_best") else "last")
        partial, why = True, "no variant finished an epoch with a dev evaluation: its latest checkpoint (partial)"
    else:
        run.result["error"] = "no variant produced a checkpoint (see run.log)"
        run.result["out_files"] = check_files(run)
        run.save()
        return 1
    run.result["selected"] = {"variant": name, "checkpoint": str(ckpt), "partial": partial,
                              "why": why, "best_epoch": entry.get("best_epoch"),
                              "dev": entry.get("best_dev")}
    # From here on $OUT holds a model: a kill at the tool's limit keeps it (the export replaces it).
    run.result["selected"]["packed_checkpoint"] = pack(ckpt, out, "best")
    run.log(f"selected {name}: {why}; checkpoint {ckpt}, packed into {run.result['selected']['packed_checkpoint']}")
    run.save()

    # ---- test ----
    started = time.time()
    eval_json = runs / name / "eval_test.json"   # where `pecrs export` reads it for the model card
    # float32: the test figures are the reference ones (auto would pick bfloat16 on the GPU).
    eval_cmd = [py, "-m", "pecrs.cli", "evaluate", str(ckpt), "--json", "--dtype", "float32", "--batch-size",
                os.environ.get("EVAL_BATCH", "16" if SMOKE else "256"), "--output", str(eval_json),
                *os.environ.get("EVAL_ARGS", "--max-samples 8" if SMOKE else "").split()]
    tail = budget["export_reserve_s"] + budget["end_reserve_s"]
    code, lines = run.call("test", eval_cmd, run.left() - tail - budget["nogen_reserve_s"])
    generated = code == 0
    if not generated:
        run.log("test with generation failed or overran: recall and perplexity only")
        code, lines = run.call("test-nogen", eval_cmd + ["--no-generate"], run.left() - tail)
    test = json.loads(eval_json.read_text()) if code == 0 and eval_json.is_file() else None
    if test:
        metrics = {k: v for k, v in test.items() if k != "examples"}
        run.result["test"] = {**metrics, "generation": generated, "partial_model": partial}
        size = eval_json.stat().st_size
        if size >= MAX_FILE - 2**20:       # keep the file under the limit: fewer examples
            test["examples"] = (test.get("examples") or [])[:200]
            eval_json.write_text(json.dumps(test, indent=1))
        shutil.copy(eval_json, out / "eval_test.json")
    else:
        run.result["test"] = {"error": "test evaluation failed or timed out (see run.log)"}
    run.stage("test", "ok" if test else "failed", started, generation=generated)

    # ---- export: into RUNS (the dev evaluations read it there), packed into $OUT at once ----
    started = time.time()
    shipped = runs / "shipped"
    export = os.environ.get("EXPORT_SUBCOMMAND", "export")    # another name: the tests' way to the fallback
    help_code, _ = run.call("export-help", [py, "-m", "pecrs.cli", export, "--help"], 30)
    if help_code == 0:
        notes = Path(__file__).with_name("model_notes.md")   # the card's "About this model"
        code, _ = run.call("export", [py, "-m", "pecrs.cli", export, str(runs / name), str(shipped),
                                      "--notes", str(notes)], run.left() - budget["end_reserve_s"])
        status = "ok" if code == 0 else "failed" if code is not None else "timed out"
        message = None if code == 0 else "pecrs export failed (see run.log)"
    else:
        status, message = "skipped", (f"`pecrs {export} --help` failed: this tree has no `pecrs {export}` yet; the best "
                                      "checkpoint (float32 adapter, heads, tokenizer) comes back as best.tar instead")
        run.log(message)
    if status != "ok":
        shutil.rmtree(shipped, ignore_errors=True)
        run.result["export"] = {"status": status, "message": message,
                                "packed_checkpoint": run.result["selected"]["packed_checkpoint"]}
    else:
        tars = pack(shipped, out, "shipped")
        for tar in run.result["selected"].pop("packed_checkpoint"):   # the export holds the same weights
            (out / tar).unlink()
        run.result["export"] = {"status": "ok", "packed": tars,
                                "files": sorted(str(Path("shipped") / p.relative_to(shipped)) for p in out_files(shipped))}
    run.stage("export", status, started)

    # ---- dev evaluations for the ship rule (time left over only) ----
    started = time.time()
    run.result["dev_evals"] = dev_evaluations(run, py, data, shipped, budget["end_reserve_s"])
    run.stage("dev-evals", "ok" if all(e.get("status") == "ok" for e in run.result["dev_evals"].values())
              else "partial", started, done=[n for n, e in run.result["dev_evals"].items() if e.get("status") == "ok"])

    # ---- end ----
    if (runs / "dev_predictions").is_dir():   # written outside $OUT: a kill mid-way leaves $OUT small
        shutil.copytree(runs / "dev_predictions", out / "dev_predictions")
    run.result["out_files"] = check_files(run)
    run.result["seconds"] = round(run.elapsed(), 1)
    run.save()
    t = run.result.get("test", {})
    run.log("SUMMARY " + json.dumps({"selected": name, "epochs": run.result["variants"][name].get("epochs_done"),
                                     "best_dev_recall_mean": entry.get("best_dev_recall_mean"),
                                     **{k: t.get(k) for k in ("recall@1", "recall@10", "recall@50", "ppl")},
                                     "export": run.result["export"]["status"], "seconds": run.result["seconds"],
                                     "file_problems": run.result["out_files"]["problems"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
