"""The experiment registry and `run_experiment` (see the package docstring)."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import RunConfig, resolve_config_path
from . import ALIASES, EXPERIMENT_NAMES, NAMES, analysis, tables, zeroshot
from .caches import clear_caches
from .given import load_given, output_dir as given_output_dir
from .keys import DATASET_LABELS, dataset_fingerprint, dataset_key, dataset_label, train_key
from .parts import Context, merge, records, run_parts, select
from .reports import write_outputs


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    plan: Callable
    report: Callable
    both_datasets: bool = False
    trains_others: bool = False   # trains models with other settings than --config's (given.load_given)


EXPERIMENTS = {e.name: e for e in [
    Experiment("main", "Tables 2 and 3: recommendation and conversation", tables.plan_main,
               tables.report_main, both_datasets=True),
    Experiment("table5", "Table 5: ablations", tables.plan_table5, tables.report_table5, trains_others=True),
    Experiment("table6", "Table 6: item metadata fields at inference", tables.plan_table6,
               tables.report_table6),
    Experiment("table7", "Table 7: zero-shot instruct LMs", zeroshot.plan_table7, zeroshot.report_table7),
    Experiment("table8", "Table 8: decoding strategies", tables.plan_table8, tables.report_table8),
    Experiment("table9_10", "Tables 9 and 10: genre analysis", analysis.plan_table9_10, analysis.report_table9_10,
               both_datasets=True),
    Experiment("fig3", "Figure 3: M_train x M_inference", analysis.plan_fig3, analysis.report_fig3,
               trains_others=True),
    Experiment("fig4", "Figure 4: R@50 by conversation turns", analysis.plan_fig4, analysis.report_fig4),
]}
if tuple(EXPERIMENTS) != EXPERIMENT_NAMES:  # pragma: no cover - keep the light name list in step
    raise RuntimeError("pecrs.experiments.EXPERIMENT_NAMES is out of date")

_PREFIXED = re.compile(r"^([A-Za-z0-9_-]+):([A-Za-z_]+\.[A-Za-z0-9_]+=.*)$")


def split_overrides(overrides) -> tuple[list[str], dict[str, list[str]]]:
    common, prefixed = [], {}
    for o in overrides:
        m = _PREFIXED.match(o)
        if m:
            prefixed.setdefault(m.group(1).lower(), []).append(m.group(2))
        else:
            common.append(o)
    return common, prefixed


def default_redial_config(config: str | Path) -> Path | None:
    """redial.yaml beside inspired.yaml (the paper's ReDial settings) when --config is the INSPIRED
    recipe, however given: a path, or the name of a packaged config (`resolve_config_path`), so
    that outside a checkout ReDial is not trained with INSPIRED's settings."""
    try:
        config = resolve_config_path(config)
    except FileNotFoundError:   # RunConfig.load names it
        return None
    sibling = config.with_name("redial.yaml")
    return sibling if config.name == "inspired.yaml" and sibling.is_file() else None


def load_configs(config: str | Path, overrides=(), redial_config: str | Path | None = None,
                 both_datasets: bool = False) -> tuple[dict[str, RunConfig], dict]:
    """{dataset key: RunConfig}, the --config dataset first; and how each was made."""
    common, prefixed = split_overrides(overrides)
    primary = RunConfig.load(config, common)
    key = dataset_key(primary)
    primary = RunConfig.load(config, common + prefixed.get(key, []))
    configs, how = {key: primary}, {key: {"config": str(config), "overrides": common + prefixed.get(key, [])}}
    if both_datasets:
        rpath = redial_config or default_redial_config(config)
        if rpath:
            red = RunConfig.load(rpath, common)
            rkey = dataset_key(red)
            extra = prefixed.get(rkey, [])
            red = RunConfig.load(rpath, common + extra)
            how_r = {"config": str(rpath), "overrides": common + extra}
        else:
            derived = [f"train.dataset={Path(primary.train.dataset).parent / 'redial'}", "train.dev_split=''"]
            extra = prefixed.get("redial", [])
            red = RunConfig.load(config, common + derived + extra)
            rkey = dataset_key(red)
            how_r = {"config": str(config), "derived": derived, "overrides": common + extra}
        if rkey not in configs:
            configs[rkey] = red
            how[rkey] = how_r
    unknown = set(prefixed) - set(configs)
    typos = unknown - set(DATASET_LABELS)
    if typos:
        raise ValueError(f"override prefix(es) {sorted(typos)} name no dataset (known: {sorted(DATASET_LABELS)}, "
                         f"this experiment: {sorted(configs)})")
    for k, cfg in configs.items():
        how[k].update(label=dataset_label(cfg), dataset=cfg.train.dataset,
                      fingerprint=dataset_fingerprint(cfg.train.dataset), resolved=cfg.to_dict())
    if unknown:  # e.g. redial:... given to a one-dataset experiment (tools/gpu/experiment.sh passes both)
        how["ignored_overrides"] = {k: prefixed[k] for k in sorted(unknown)}
    return configs, how


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment '{name}'; choose from {', '.join(NAMES)}")
    return name


def experiment_context(name: str, config: str | Path | None = None, output_dir: str | Path | None = None,
                       overrides=(), redial_config: str | Path | None = None, accept_partial: bool = False,
                       options: dict | None = None, progress: bool = False, model: str | None = None,
                       parts: list[str] | None = None, command: str | None = None) -> tuple[Experiment, Context, dict]:
    """The experiment, its `Context` (configs per dataset, folders, a given model) and how each
    config was made; see `run_experiment`."""
    exp = EXPERIMENTS[resolve_name(name)]
    options = {k: v for k, v in (options or {}).items() if v}
    given = {}
    if model is not None:
        if config is not None or redial_config is not None:
            raise ValueError("--model brings the config it was trained with: give overrides, not --config or --redial-config")
        if exp.name == "table7":
            raise ValueError("table7 prompts zero-shot LMs (--models); it evaluates no trained PECRS model (--model)")
        configs, how, model_given = load_given(model, *split_overrides(overrides), trains_others=exp.trains_others,
                                                  accept_partial=accept_partial)
        given = {train_key(next(iter(configs.values()))): model_given}
        output_dir = output_dir or given_output_dir(model_given.checkpoint)
    else:
        config = config or "configs/inspired.yaml"
        configs, how = load_configs(config, overrides, redial_config, exp.both_datasets)
    output_dir = output_dir or "runs/experiments"
    if command is None:
        args = [exp.name] + (["--model", str(model)] if model is not None else ["--config", str(config)])
        args += ["--output-dir", str(output_dir)]
        args += [f"--parts={','.join(parts)}"] if parts else []
        args += ["--redial-config", str(redial_config)] if redial_config else []
        args += ["--accept-partial"] if accept_partial else []
        args += [f"--{k.replace('_', '-')}={','.join(map(str, v))}" for k, v in options.items()]
        command = "pecrs experiment " + shlex.join(args + list(overrides))
    ctx = Context(name=exp.name, root=Path(output_dir), configs=configs, options=options,
                  accept_partial=accept_partial, progress=progress, command=command, given=given)
    return exp, ctx, how


def run_experiment(name: str, config: str | Path | None = None, output_dir: str | Path | None = None,
                   overrides=(), parts: list[str] | None = None, redial_config: str | Path | None = None,
                   accept_partial: bool = False, merge_files=(), list_only: bool = False, options: dict | None = None,
                   progress: bool = False, command: str | None = None, log=print, model: str | None = None) -> dict:
    """Run the chosen parts of one experiment (all when `parts` is None), then rewrite its
    result.json / table.md / figures from every finished part. Returns the result.json object,
    with "errors" listing parts that failed (their numbers are simply absent) and "folder" its own.

    `config` defaults to configs/inspired.yaml, `output_dir` to runs/experiments. `model` (a run
    folder, checkpoint folder or shipped model name) is evaluated instead of a model trained here
    (given.py): its own config replaces `config`, on its own dataset only, and `output_dir`
    defaults to runs/experiments-NAME."""
    exp, ctx, how = experiment_context(name, config, output_dir, overrides, redial_config, accept_partial, options,
                                       progress, model, parts, command)
    ctx.folder.mkdir(parents=True, exist_ok=True)
    all_parts = exp.plan(ctx)
    if merge_files:
        restored = merge(ctx, all_parts, list(merge_files))
        log(f"[{ctx.name}] merged {len(restored)} part(s): {', '.join(restored) or 'none'}")
    chosen = [] if list_only else select(all_parts, parts)
    try:
        status, errors = run_parts(ctx, all_parts, chosen, log=log)
    finally:
        clear_caches()
    report = exp.report(ctx, records(ctx, all_parts), status)
    result = write_outputs(ctx, all_parts, status, report, how)
    result["errors"] = errors
    result["folder"] = str(ctx.folder)
    return result


__all__ = ["EXPERIMENTS", "ALIASES", "NAMES", "run_experiment", "experiment_context", "load_configs", "resolve_name"]
