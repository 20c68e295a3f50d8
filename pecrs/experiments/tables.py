"""Experiments on trained PECRS models: Tables 2 and 3 (`main`), 5 (ablations), 6 (metadata
fields at inference) and 8 (decoding strategies)."""
from __future__ import annotations

from ..decoding import PRESETS
from ..evaluate import MEDOID_REPLIES
from . import paper
from .given import given_note
from .keys import copy_config, dataset_fingerprint, dataset_label, train_key
from .markdown import fmt, md_table, paper as pcell
from .parts import Context, Part
from .reports import Report
from .runs import eval_part, training_in_progress, training_part, training_progress
from .measures import full_evaluation, naive_baseline, rankings, recommendation

KS = (1, 10, 50)
NAIVE_LABEL = "Naive baseline: earlier mentions, latest first (no model)"
CONSTANT_LABEL = "Constant reply (no model)"


def ours_label(config, rec: dict | None = None) -> str:
    label = f"PECRS, ours ({config.model.backbone})"
    ck = ((rec or {}).get("result") or {}).get("checkpoint") or {}
    if ck and not ck.get("finished", True):
        label += f" [partly trained: {training_progress(ck)}]"
    return label


def _tested_on(ctx: Context) -> str:
    """What the test rows measured: the whole official test split, or the first N samples when a
    config's train.max_eval_samples cut it (a quick table must not read as the full one)."""
    cuts = {key: cfg.train.max_eval_samples for key, cfg in ctx.configs.items() if cfg.train.max_eval_samples}
    if not cuts:
        return "the complete official test set"
    return "the first samples of the test set only (train.max_eval_samples: " + ", ".join(
        f"{key} {n:,}" for key, n in cuts.items()) + ")"


def training_note(recs: dict, name: str, ctx: Context | None = None, config=None) -> str:
    """One line on how a model was trained (epochs, best epoch, time per batch); for a run still in
    progress (given its ctx and config), how far it got; else "not run"."""
    rec = recs.get(name)
    given = ctx.given.get(train_key(config)) if ctx is not None and config is not None else None
    if rec is None and given is not None:      # its part has not run (--list, --parts), the model is known
        return given_note(name, given.info)
    if rec is None:
        going = training_in_progress(ctx, config) if ctx is not None and config is not None else None
        if going is None:
            return f"`{name}`: not run"
        spb = going.get("seconds_per_batch")
        return (f"`{name}`: in progress, {training_progress(going)} ({going.get('train_batches')} batches, "
                f"{fmt(spb, 'sec') if spb is not None else 'n/a'} s/batch), run folder `runs/{going['run_dir']}`")
    r = rec["result"]
    if r.get("given"):
        return given_note(name, r)
    spb = r.get("seconds_per_batch")
    kept = (f"best dev epoch {r.get('best_epoch')}" if config is None or config.train.dev_split
            else "the last epoch kept (no dev split)")
    return (f"`{name}`: {r.get('epoch')}/{r.get('epochs')} epochs, {kept}, "
            f"{r.get('train_batches')} batches, {fmt(spb, 'sec') if spb is not None else 'n/a'} s/batch "
            f"({r.get('hardware', '?')}), run folder `runs/{r.get('run_dir')}`")


# ---- main: Tables 2 and 3 -------------------------------------------------------------------------

def plan_main(ctx: Context):
    parts = []
    for key, cfg in ctx.configs.items():
        label = dataset_label(cfg)
        # Keyed by what decides its numbers only (no model, no training settings), so any run of
        # `main` on the same data reuses it.
        spec = {"baseline": "naive", "data": dataset_fingerprint(cfg.train.dataset), "split": cfg.train.test_split,
                "max_eval_samples": cfg.train.max_eval_samples,
                "redial_mentions": cfg.train.redial_mentions,   # decides the reply texts, so both baselines
                "constant_reply": {"chosen_on": cfg.train.train_split, "seed": cfg.train.seed, "rule": "medoid-rouge1",
                                   "max_replies": MEDOID_REPLIES}}
        parts.append(Part(name=f"{key}-naive", kind="baseline", run=lambda cfg=cfg: naive_baseline(cfg),
                          spec=spec, dataset=key,
                          describe=f"naive baseline and constant reply on {label} {cfg.train.test_split} (no model)"))
        parts.append(training_part(ctx, f"{key}-train", cfg, describe=f"train PECRS on {label}"))
        parts.append(eval_part(ctx, f"{key}-test", cfg, lambda setup, cfg=cfg: full_evaluation(setup, cfg),
                               spec={"eval": "test", "generate": True},
                               describe=f"evaluate on {label} {cfg.train.test_split} (recommendation + generation)"))
    return parts


def paper_rouge_by_its_code(numbers: dict) -> dict:
    """A paper row with its ROUGE under the keys of ours that match it: the paper's code scored
    replies with the speaker tag and "[MOVIE_ID]" (`rouge_1_2_paper_protocol`), so its RG-1/RG-2
    are `rouge1_paper_protocol`/`rouge2_paper_protocol`, not our `rouge1`/`rouge2`."""
    renamed = {"rouge1": "rouge1_paper_protocol", "rouge2": "rouge2_paper_protocol"}
    return {renamed.get(k, k): v for k, v in numbers.items()}


def report_main(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    rec_rows, conv_rows, summary = [], [], {}
    for key, cfg in ctx.configs.items():
        label = dataset_label(cfg)
        rec = recs.get(f"{key}-test")
        r = rec["result"] if rec else {}
        ok = rec is not None
        table3 = {model: paper_rouge_by_its_code(p) for model, p in paper.TABLE3.get(key, {}).items()}
        summary[key] = {"dataset": label, "measured": ok,
                        "ours": {k: v for k, v in r.items() if k not in ("examples",)} if ok else None,
                        "paper": {"table2": paper.TABLE2.get(key), "table3": table3 or None}}
        for model, p in paper.TABLE2.get(key, {}).items():
            rec_rows.append([label, f"{model} (paper)"] + [pcell(p[f"recall@{k}"], ".1f") for k in KS]
                            + [pcell(p["unique"], "int")] + ["—"] * 4)
        naive = recs.get(f"{key}-naive")
        summary[key]["naive"] = naive["result"] if naive else None
        for row_label, row_rec, dedup in ((NAIVE_LABEL, naive, False), (ours_label(cfg, rec), rec, True)):
            got, row_ok = (row_rec or {}).get("result", {}), row_rec is not None
            rec_rows.append([label, row_label] + [fmt(got.get(f"recall@{k}"), "pct", row_ok) for k in KS]
                            + [fmt(got.get("unique"), "int", row_ok)]
                            + [fmt(got.get(f"dedup_recall@{k}"), "pct", row_ok) if dedup else "—" for k in KS]
                            + [fmt(got.get("n_rec_samples"), "int", row_ok)])
        conv_keys = ("rouge1", "rouge2", "rouge1_paper_protocol", "rouge2_paper_protocol", "f1_item", "ppl",
                     "dist2", "dist3", "dist4")
        kinds = ("num", "num", "num", "num", "num", "num", "num3", "num3", "num3")
        for model, p in table3.items():
            src = "Table 3" if key == "redial" else "Table 7"
            conv_rows.append([label, f"{model} (paper, {src})"]
                             + [pcell(p.get(k), ".3f" if k.startswith("dist") else ".2f") for k in conv_keys] + ["—"])
        constant = (naive or {}).get("result", {})
        shown = constant.get("constant_reply")
        conv_rows.append([label, CONSTANT_LABEL + (f": \u201c{shown}\u201d" if shown else "")]
                         + [fmt(constant.get(k), kd, bool(shown)) if k != "ppl" else "—" for k, kd in zip(conv_keys, kinds)]
                         + [fmt(constant.get("n_gen_samples"), "int", bool(shown))])
        conv_rows.append([label, ours_label(cfg, rec)] + [fmt(r.get(k), kd, ok) for k, kd in zip(conv_keys, kinds)]
                         + [fmt(r.get("n_gen_samples"), "int", ok)])
    md = ["## Table 2: recommendation", "",
          md_table(["Dataset", "Model", "R@1", "R@10", "R@50", "Unique", "dedup R@1", "dedup R@10", "dedup R@50",
                    "samples"], rec_rows), "",
          "Recall in % of the test samples that have a target item. *dedup*: only samples whose target was not "
          "mentioned earlier in the dialogue. *Naive baseline*: no model, it recommends the items already mentioned "
          "in the dialogue, most recently mentioned first, so its dedup recall is 0 by construction (—) (the paper "
          "reports neither). Paper rows use GPT-2 small/medium backbones; the paper's ReDial model was "
          "trained on the full ReDial train split (10,006 dialogues), ours on ReDial-subset (the 1,813 train "
          f"dialogues available here), tested on {_tested_on(ctx)}.", "",
          "## Table 3: conversation", "",
          md_table(["Dataset", "Model", "RG-1", "RG-2", "RG-1 (paper's code)", "RG-2 (paper's code)", "F-1", "PPL",
                    "Dist@2", "Dist@3", "Dist@4", "responses"], conv_rows), "",
          "ROUGE and F-1 (of [ITEM] presence) x100; one generated response per recommender turn, decoding "
          f"`{ctx.configs[ctx.primary].inference.decoding}`. The paper gives INSPIRED conversation numbers only as "
          "RG-1/RG-2 in Table 7. *RG (paper's code)*: the same replies scored as the released PECRS code scores them, "
          "the speaker tag \"A: \" before reference and reply and [ITEM] written \"[MOVIE_ID]\" (two words), so "
          "every pair shares a word; the paper's ROUGE was computed that way, hence its columns. *Constant reply*: "
          f"no model, every turn answered with the training reply closest in ROUGE-1 to the others (of {MEDOID_REPLIES:,} drawn) "
          "(`pecrs.metrics.medoid_reply`): what the metrics give for nothing. The paper's Dist@n counted the "
          "speaker tag as a word too (0.1 to 0.4 more on the shipped model's INSPIRED replies).", "", "Training:", ""]
    md += [f"- {training_note(recs, f'{key}-train', ctx, cfg)}" for key, cfg in ctx.configs.items()]
    return Report(summary=summary, markdown="\n".join(md))


# ---- Table 5: ablations ---------------------------------------------------------------------------

ABLATIONS = [
    ("full", "PECRS (full)", {}),
    ("no_recall", "w/o Recall loss", {"train.alpha": 0.0}),
    ("no_rerank", "w/o Rerank loss", {"train.beta": 0.0}),
    ("no_generation", "w/o Generation loss", {"train.gamma": 0.0}),
    ("no_share_batch", "w/o Neg. sharing (batch)", {"train.share_negatives_batch": False}),
    ("no_share_tasks", "w/o Neg. sharing (tasks)", {"train.share_negatives_tasks": False}),
    ("no_item_pooling", "w/o Item pooling", {"model.item_pooling": False}),
    ("no_item_head", "w/o Item head", {"model.item_head": False}),
    ("title_only", "w/o Metadata (just title)", {"model.item_fields": ["title"]}),
]


def plan_table5(ctx: Context):
    base = ctx.configs[ctx.primary]
    parts = []
    for name, label, changes in ABLATIONS:
        cfg = copy_config(base, **changes)
        parts.append(training_part(ctx, f"train-{name}", cfg, describe=f"train {label} ({changes or 'no change'})"))
        parts.append(eval_part(ctx, f"test-{name}", cfg, lambda setup, cfg=cfg: full_evaluation(setup, cfg),
                               spec={"ablation": name, "changes": changes}, describe=f"evaluate {label}"))
    return parts


def report_table5(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    cfg = ctx.configs[ctx.primary]
    rows, summary = [], {}
    for name, label, changes in ABLATIONS:
        tr, te = recs.get(f"train-{name}"), recs.get(f"test-{name}")
        t, r = (tr or {}).get("result", {}), (te or {}).get("result", {})
        p = paper.TABLE5[name]
        summary[name] = {"label": label, "changes": changes, "trained": tr is not None, "measured": te is not None,
                         "seconds_per_batch": t.get("seconds_per_batch"), "train_hardware": t.get("hardware"),
                         "ours": {k: v for k, v in r.items() if k != "examples"} if te else None,
                         "paper": dict(zip(("seconds_per_batch", "recall@50", "unique", "rouge1_paper_protocol", "dist2"), p))}
        ok = te is not None
        rows.append([label + ("" if r.get("checkpoint", {}).get("finished", True) else " [partly trained]"),
                     fmt(t.get("seconds_per_batch"), "sec", tr is not None), pcell(p[0], ".1f"),
                     fmt(r.get("recall@50"), "pct", ok), pcell(p[1], ".1f"),
                     fmt(r.get("unique"), "int", ok), pcell(p[2], "int"),
                     fmt(r.get("rouge1_paper_protocol"), "num", ok), pcell(p[3], ".2f"),
                     fmt(r.get("dist2"), "num3", ok), pcell(p[4], ".3f"),
                     fmt(r.get("recall@1"), "pct", ok), fmt(r.get("recall@10"), "pct", ok),
                     fmt(r.get("rouge1"), "num", ok)])
    hw = sorted({s["train_hardware"] for s in summary.values() if s["train_hardware"]})
    md = [f"## Table 5: ablations ({dataset_label(cfg)}, backbone `{cfg.model.backbone}`)", "",
          md_table(["Model", "Time/batch (s)", "paper", "R@50", "paper", "Unique", "paper", "RG-1 (paper's code)",
                    "paper", "Dist@2", "paper", "R@1", "R@10", "RG-1"], rows), "",
          f"Paper: ReDial, PECRS-small (GPT-2 small), its own GPU. Ours: {dataset_label(cfg)}, batch size "
          f"{cfg.train.batch_size}, training time per batch measured on: {', '.join(hw) or 'not run'} "
          "(training loop only, dev evaluation excluded). R@K in %, RG-1 x100: beside the paper's, scored as its "
          "code scored it (\"A: \" before reply and reference, [ITEM] as \"[MOVIE_ID]\"); last column, the "
          "texts as they are.", "", "Training:", ""]
    md += [f"- {training_note(recs, f'train-{name}', ctx, copy_config(cfg, **changes))}"
           for name, _, changes in ABLATIONS]
    return Report(summary=summary, markdown="\n".join(md))


# ---- Table 6: metadata fields at inference ------------------------------------------------------------

def plan_table6(ctx: Context):
    base = ctx.configs[ctx.primary]
    fields = list(base.model.item_fields)
    parts = [training_part(ctx, "train", base, describe="train the full model")]
    for removed in ["none"] + fields:
        keep = [f for f in fields if f != removed]
        cfg = copy_config(base, **{"model.item_fields": keep})

        def body(setup, cfg=cfg, keep=keep):
            samples, ranked, targets, seconds = rankings(setup, cfg)
            return {"item_fields": keep, **recommendation(setup, samples, ranked, targets), "seconds": seconds}

        parts.append(eval_part(ctx, f"test-no-{removed}" if removed != "none" else "test-none", base, body,
                               spec={"removed": removed}, config=cfg,
                               describe=f"evaluate with item fields {keep}"))
    return parts


def report_table6(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    cfg = ctx.configs[ctx.primary]
    fields = ["none"] + list(cfg.model.item_fields)
    summary, rows = {}, []
    for removed in fields:
        rec = recs.get("test-none" if removed == "none" else f"test-no-{removed}")
        r = rec["result"] if rec else {}
        ok = rec is not None
        summary[removed] = {"measured": ok, "paper_recall@50": paper.TABLE6.get(removed),
                            "ours": r if ok else None}
        rows.append([removed.capitalize() if removed != "none" else "None", pcell(paper.TABLE6.get(removed), ".1f"),
                     fmt(r.get("recall@50"), "pct", ok), fmt(r.get("recall@1"), "pct", ok),
                     fmt(r.get("recall@10"), "pct", ok), fmt(r.get("unique"), "int", ok)])
    md = [f"## Table 6: one item field removed at inference ({dataset_label(cfg)}, backbone `{cfg.model.backbone}`)",
          "", md_table(["Removed", "R@50 paper", "R@50", "R@1", "R@10", "Unique"], rows), "",
          "One model trained with all fields; at inference the catalog is re-encoded without the field. "
          "Paper: INSPIRED, PECRS-small. R@K in %.", "", "Training:", "", f"- {training_note(recs, 'train', ctx, cfg)}"]
    return Report(summary=summary, markdown="\n".join(md))


# ---- Table 8: decoding strategies ------------------------------------------------------------------

def plan_table8(ctx: Context):
    base = ctx.configs[ctx.primary]
    parts = [training_part(ctx, "train", base, describe="train the full model")]
    for strategy in PRESETS:
        parts.append(eval_part(ctx, f"test-{strategy}", base,
                               lambda setup, s=strategy: full_evaluation(setup, base, strategy=s),
                               spec={"strategy": strategy}, describe=f"evaluate with decoding {strategy}"))
    return parts


def report_table8(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    cfg = ctx.configs[ctx.primary]
    rows, summary = [], {}
    # Beside the paper's ROUGE, ours scored as its code scored it (`rouge_1_2_paper_protocol`).
    keys = ("rouge1_paper_protocol", "rouge2_paper_protocol", "dist2", "dist3", "dist4")
    for strategy in PRESETS:
        rec = recs.get(f"test-{strategy}")
        r = rec["result"] if rec else {}
        ok = rec is not None
        p = paper.TABLE8.get(strategy, (strategy,) + (None,) * 5)
        summary[strategy] = {"measured": ok, "paper": dict(zip(keys, p[1:])),
                             "ours": {k: r.get(k) for k in keys + ("rouge1", "rouge2", "ppl", "f1_item", "n_gen_samples")}
                             if ok else None}
        row = [p[0], f"`{strategy}`"]
        for k, kind, pv in zip(keys, ("num", "num", "num3", "num3", "num3"), p[1:]):
            row += [fmt(r.get(k), kind, ok), pcell(pv, ".3f" if kind == "num3" else ".2f")]
        rows.append(row + [fmt(r.get("rouge1"), "num", ok), fmt(r.get("rouge2"), "num", ok)])
    md = [f"## Table 8: decoding strategies ({dataset_label(cfg)}, backbone `{cfg.model.backbone}`)", "",
          md_table(["Strategy", "preset", "RG-1 (paper's code)", "paper", "RG-2 (paper's code)", "paper", "Dist@2",
                    "paper", "Dist@3", "paper", "Dist@4", "paper", "RG-1", "RG-2"], rows), "",
          "Presets as defined in `pecrs.decoding` (beam width 4 except greedy). Paper: ReDial, PECRS-small. "
          "RG (paper's code): \"A: \" before reply and reference, [ITEM] as \"[MOVIE_ID]\", as the paper's code "
          "scored them; RG-1/RG-2: the texts as they are. The paper's Dist@n counted the speaker tag as a word "
          "too.", "",
          "Training:", "", f"- {training_note(recs, 'train', ctx, cfg)}"]
    return Report(summary=summary, markdown="\n".join(md))


__all__ = ["ABLATIONS", "plan_main", "report_main", "plan_table5", "report_table5", "plan_table6",
           "report_table6", "plan_table8", "report_table8"]
