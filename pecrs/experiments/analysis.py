"""Analyses of trained models: Figure 3 (M_train x M_inference), Figure 4 (turns before the
response), Tables 9–10 (genre of the top-1 recommendation)."""
from __future__ import annotations

import numpy as np

from .. import metrics
from . import paper
from .keys import copy_config, dataset_label
from .markdown import fmt, md_table, paper as pcell
from .parts import Context
from .reports import Report, pyplot, save_png
from .runs import eval_part, training_part
from .measures import rankings, rankings_at, recommendation
from .tables import training_note

DEFAULT_M_TRAIN = (50, 100, 150, 200)
DEFAULT_M_INFERENCE = (100, 200, 300, 500, 700, 1000)


# ---- Figure 3 -----------------------------------------------------------------------------------

def grid(ctx: Context) -> tuple[list[int], list[int]]:
    m_train = ctx.options.get("m_train") or DEFAULT_M_TRAIN
    if ctx.given and not ctx.options.get("m_train"):   # a given model's own M_train is a row of the figure
        m_train = sorted({*m_train, ctx.configs[ctx.primary].train.m_train})
    return list(m_train), list(ctx.options.get("m_inference") or DEFAULT_M_INFERENCE)


def plan_fig3(ctx: Context):
    base = ctx.configs[ctx.primary]
    m_train, m_inf = grid(ctx)
    parts = []
    for mt in m_train:
        cfg = copy_config(base, **{"train.m_train": mt})

        def body(setup, cfg=cfg, mt=mt):
            # One re-rank pass at the largest M_inference serves every M (see rank_samples_at).
            samples, ranked, targets, seconds = rankings_at(setup, cfg, m_inf)
            out = {str(mi): metrics.recall_at_k(ranked[mi], targets) for mi in m_inf}
            return {"m_train": mt, "n_rec_samples": int(len(targets)), "catalog": len(setup.store), "grid": out,
                    "seconds": round(seconds, 2)}

        parts.append(training_part(ctx, f"train-m{mt}", cfg, describe=f"train with M_train={mt}"))
        parts.append(eval_part(ctx, f"test-m{mt}", cfg, body, spec={"m_train": mt, "m_inference": m_inf},
                               describe=f"R@K for M_inference in {m_inf}"))
    return parts


def report_fig3(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    cfg = ctx.configs[ctx.primary]
    m_train, m_inf = grid(ctx)
    rows, summary = [], {}
    for mt in m_train:
        rec = recs.get(f"test-m{mt}")
        g = rec["result"]["grid"] if rec else {}
        summary[str(mt)] = {str(mi): (g.get(str(mi)) or {}).get("recall@50") for mi in m_inf} if rec else None
        rows.append([str(mt)] + [fmt((g.get(str(mi)) or {}).get("recall@50"), "pct", rec is not None) for mi in m_inf])
    catalog = next((r["result"].get("catalog") for r in recs.values() if r["kind"] == "eval"), None)

    def draw(path):
        measured = [mt for mt in m_train if summary.get(str(mt))]
        if not measured:
            return False
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for mt in measured:
            ys = [summary[str(mt)][str(mi)] for mi in m_inf]
            ax.plot(m_inf, [100 * y if y is not None else np.nan for y in ys], marker="o", label=f"M_train={mt}")
        ax.set_xlabel("M_inference")
        ax.set_ylabel("R@50 (%)")
        ax.set_title(f"R@50 by M_train and M_inference ({dataset_label(cfg)}, {cfg.model.backbone})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return save_png(fig, path)

    md = [f"## Figure 3: R@50 (%) over M_train x M_inference ({dataset_label(cfg)}, backbone `{cfg.model.backbone}`)",
          "", md_table(["M_train \\ M_inference"] + [str(mi) for mi in m_inf], rows), "",
          f"Catalog size: {catalog if catalog is not None else 'not run'} (M_inference above it ranks the whole "
          "catalog; below 50, R@50 counts only the M_inference re-ranked candidates). The paper (ReDial, PECRS-small) gives this only as a plot, so no paper number is shown. "
          "Plot: `fig3.png`.", "", "Training:", ""]
    md += [f"- {training_note(recs, f'train-m{mt}', ctx, copy_config(cfg, **{'train.m_train': mt}))}"
           for mt in m_train]
    return Report(summary={"recall@50": summary, "m_train": m_train, "m_inference": m_inf},
                  markdown="\n".join(md), figures={"fig3.png": draw})


# ---- Figure 4 -----------------------------------------------------------------------------------

TURN_BINS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 7), (8, 9), (10, 14), (15, 19), (20, None)]


def bin_label(lo: int, hi: int | None) -> str:
    return str(lo) if hi == lo else (f"{lo}-{hi}" if hi is not None else f"{lo}+")


def by_turns(turns: np.ndarray, ranks: np.ndarray) -> list[dict]:
    out = []
    for lo, hi in TURN_BINS:
        sel = (turns >= lo) & ((turns <= hi) if hi is not None else True)
        n = int(sel.sum())
        r = ranks[sel]
        out.append({"turns": bin_label(lo, hi), "n": n,
                    **{f"recall@{k}": (float(np.mean((r >= 0) & (r < k))) if n else None) for k in (1, 10, 50)}})
    return out


def plan_fig4(ctx: Context):
    base = ctx.configs[ctx.primary]

    def body(setup):
        samples, ranked, targets, seconds = rankings(setup, base)
        ranks = metrics.target_ranks(ranked, targets)
        turns = np.array([s.turn_index for s in samples], dtype=np.int64)
        return {**recommendation(setup, samples, ranked, targets), "bins": by_turns(turns, ranks),
                "per_sample": [[int(t), int(r)] for t, r in zip(turns, ranks)],
                "per_sample_fields": ["turns_before_response", "target_rank_or_-1"], "seconds": seconds}

    return [training_part(ctx, "train", base, describe="train the full model"),
            eval_part(ctx, "test", base, body, spec={"per_sample": True, "bins": TURN_BINS},
                      describe="rank the test samples, R@50 by turns before the response")]


def report_fig4(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    cfg = ctx.configs[ctx.primary]
    rec = recs.get("test")
    bins = rec["result"]["bins"] if rec else [{"turns": bin_label(lo, hi)} for lo, hi in TURN_BINS]
    ok = rec is not None
    rows = [[b["turns"], fmt(b.get("n"), "int", ok), fmt(b.get("recall@50"), "pct", ok),
             fmt(b.get("recall@10"), "pct", ok), fmt(b.get("recall@1"), "pct", ok)] for b in bins]

    def draw(path):
        if not ok:
            return False
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [b["turns"] for b in bins]
        ys = [100 * b["recall@50"] if b["recall@50"] is not None else 0.0 for b in bins]
        bars = ax.bar(xs, ys, color="#4C72B0")
        for bar, b in zip(bars, bins):
            ax.annotate(f"n={b['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xlabel("turns before the response")
        ax.set_ylabel("R@50 (%)")
        ax.set_title(f"R@50 by dialogue turns ({dataset_label(cfg)}, {cfg.model.backbone})", fontsize=9)
        return save_png(fig, path)

    md = [f"## Figure 4: R@50 by number of turns before the response ({dataset_label(cfg)}, backbone "
          f"`{cfg.model.backbone}`)", "",
          md_table(["turns before", "samples", "R@50", "R@10", "R@1"], rows), "",
          "Turns are the dataset's turns (consecutive utterances of one speaker merged, as in PECRS). "
          f"Overall R@50: {fmt((rec or {}).get('result', {}).get('recall@50'), 'pct', ok)}. The paper (ReDial) "
          "gives this only as a plot. Plot: `fig4.png`; per-sample ranks in the `test` part of result.json.", "",
          "Training:", "", f"- {training_note(recs, 'train', ctx, cfg)}"]
    return Report(summary={"bins": bins if ok else None}, markdown="\n".join(md), figures={"fig4.png": draw})


# ---- Tables 9–10 ------------------------------------------------------------------------------------

def plan_table9_10(ctx: Context):
    parts = []
    for key, cfg in ctx.configs.items():
        def body(setup, cfg=cfg):
            samples, ranked, targets, seconds = rankings(setup, cfg)
            top1 = ranked[:, 0] if ranked.size else np.full(len(targets), -1)
            analysis = metrics.top1_genre_accuracy(top1, targets, [it.genres for it in setup.store.items])
            return {**recommendation(setup, samples, ranked, targets), "genres": analysis, "seconds": seconds}

        parts.append(training_part(ctx, f"{key}-train", cfg, describe=f"train on {dataset_label(cfg)}"))
        parts.append(eval_part(ctx, f"{key}-test", cfg, body, spec={"analysis": "genre"},
                               describe=f"genre of the top-1 recommendation on {dataset_label(cfg)}"))
    return parts


def report_table9_10(ctx: Context, recs: dict, status: dict | None = None) -> Report:
    md, summary = [], {}
    for key, cfg in ctx.configs.items():
        rec = recs.get(f"{key}-test")
        ok = rec is not None
        g = rec["result"]["genres"] if ok else {}
        per = g.get("per_genre", {})
        ours = {name.casefold(): name for name in per}   # the paper writes "Sci-fi", "Film-noir"; the data "Sci-Fi"
        pg = {ours.get(name.casefold(), name): row for name, row in paper.GENRES.get(key, {}).items()}
        ps = paper.GENRE_SUMMARY.get(key, {})
        names = list(per) + [n for n in pg if n not in per]
        def cell(o, field, kind):
            if not ok:
                return "not run"
            return "absent" if o is None else fmt(o[field], kind)

        rows = []
        for name in names:
            o, p = per.get(name), pg.get(name, (None, None, None))
            rows.append([name, cell(o, "items_share", "pct2"), pcell(p[0], ".2f"), cell(o, "test_share", "pct2"),
                         pcell(p[1], ".2f"), cell(o, "accuracy", "pct2"), pcell(p[2], ".2f"), cell(o, "n", "int")])
        summary[key] = {"dataset": dataset_label(cfg), "measured": ok, "ours": g if ok else None,
                        "paper": {"table": ps.get("table"), "per_genre": pg, "wrong_genre_rate": ps.get("wrong_genre_rate"),
                                  "random_genre_rate": ps.get("random_genre_rate")}}
        md += [f"## {ps.get('table', 'Genre table')}: genre of the top-1 recommendation ({dataset_label(cfg)}, "
               f"backbone `{cfg.model.backbone}`)", "",
               md_table(["Genre (first tag)", "Items %", "paper", "Test set %", "paper", "Correct genre %", "paper",
                         "test samples"], rows), "",
               md_table(["", "ours", "paper (PECRS-medium)"], [
                   ["Top-1 correct genre, all samples", fmt(g.get("accuracy"), "pct2", ok), "—"],
                   ["Correct genre among wrong top-1", fmt(g.get("wrong_genre_rate"), "pct2", ok),
                    pcell(ps.get("wrong_genre_rate"), ".2f")],
                   ["Random (wrong) recommendation", fmt(g.get("random_genre_rate"), "pct2", ok),
                    pcell(ps.get("random_genre_rate"), ".2f")],
                   ["Wrong top-1 / samples", f"{g.get('n_wrong')}/{g.get('n_samples')}" if ok else "not run", "—"]]),
               "", "*absent*: a genre of the paper's table that no item here has as its first tag. Items % is over "
               "our catalog, which differs from the paper's (see data README).", "",
               f"Training: {training_note(recs, f'{key}-train', ctx, cfg)}", ""]
    return Report(summary=summary, markdown="\n".join(md))
