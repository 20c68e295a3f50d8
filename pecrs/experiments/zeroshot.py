"""Table 7: instruction-tuned LMs in zero-shot, prompted with the dialogue to write the
recommender's next response (§4.4).

As the paper does: condition on the context, ask for the Recommender's response, decode greedily
(bfloat16 on a GPU), and count a hit when the ground-truth movie's title appears in the response.
An LM names at most one list of movies, so R@1 = R@10 = R@50 = the hit rate over the test samples
that have a target; Unique = distinct ground-truth movies hit (the paper's Unique for LLMs equals
its hit count: 9.3% of 279 INSPIRED samples = 26). ROUGE-1/2 compare each recommender turn's
response with the reference, whose [ITEM] placeholders are filled with the movies' "Title (Year)",
as the context shown to the LM is.

Choices made here (the paper gives no prompt): the context is the dialogue so far as
"Seeker: ..." / "Recommender: ..." lines, the oldest turns dropped to fit `PROMPT_MAX_TOKENS`;
with a chat template it is one user message after a short system message, otherwise plain text
ending in "Recommender:". The response is cut where the LM starts a "Seeker:" line.
"""
from __future__ import annotations

import re
import time

from .. import metrics
from ..config import RunConfig
from ..data import ITEM, RECOMMENDER
from ..metrics.generation import RELEASED_ZERO_SHOT_SPEAKER_TAG
from . import paper
from .keys import dataset_label
from .markdown import NOT_RUN, fmt, md_table, paper as pcell
from .parts import Context, NotAvailable, Part, records
from .reports import Report

DEFAULT_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
PROMPT_VERSION = 1
PROMPT_MAX_TOKENS = 1024
ROUGE_COLUMNS = ("rouge1_paper_protocol", "rouge2_paper_protocol", "rouge1", "rouge2")
SYSTEM = ("You are the Recommender in a conversation with a Seeker who is looking for a movie to watch. "
          "Reply with the Recommender's next message only. Recommend a specific movie by its title.")
INSTRUCTION = "Here is the conversation so far:\n\n{dialogue}\n\nWrite the Recommender's next message."


def normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def mentions(response: str, title: str) -> bool:
    t = normalize(title)
    return bool(t) and f" {t} " in f" {normalize(response)} "


def fill(text: str, ids, items) -> str:
    """The text with each [ITEM] replaced by its movie's "Title (Year)"."""
    for item_id in ids:
        shown = items[item_id].display() if item_id in items else item_id
        text = text.replace(ITEM, shown, 1)
    return text


def turn_line(turn, items) -> str:
    return f"{'Recommender' if turn.role == RECOMMENDER else 'Seeker'}: {fill(turn.text, turn.items, items)}"


def build_prompt(tokenizer, lines: list[str], budget: int,
                 line_tokens: list[int] | None = None) -> tuple[str, bool, int]:
    """(prompt text, whether the chat template was used, number of context turns kept).
    line_tokens: each line's token count plus one (its newline), when the caller has them."""
    templated = bool(getattr(tokenizer, "chat_template", None))

    def render(dialogue: str) -> str:
        if not templated:
            return f"{SYSTEM}\n\n{dialogue}\nRecommender:"
        user = INSTRUCTION.format(dialogue=dialogue)
        try:
            return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": user}],
                                                 tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates without a system role
            return tokenizer.apply_chat_template([{"role": "user", "content": f"{SYSTEM}\n\n{user}"}],
                                                 tokenize=False, add_generation_prompt=True)

    overhead = len(tokenizer(render(""), add_special_tokens=not templated)["input_ids"])
    lengths = line_tokens if line_tokens is not None else line_token_counts(tokenizer, lines)
    kept, total = 0, overhead
    for n in reversed(lengths):
        if total + n > budget and kept:
            break
        total += n
        kept += 1
    return render("\n".join(lines[len(lines) - kept:])), templated, kept


def line_token_counts(tokenizer, lines: list[str]) -> list[int]:
    return [len(x) + 1 for x in tokenizer(lines, add_special_tokens=False)["input_ids"]] if lines else []


def clean_response(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(recommender|assistant)\s*:\s*", "", text, flags=re.I)
    return re.split(r"\n\s*seeker\s*:", text, maxsplit=1, flags=re.I)[0].strip()


def zero_shot(model_name: str, config: RunConfig, progress: bool = False) -> dict:
    import torch

    from ..backbone import BackboneNotAvailable, load_backbone
    from ..loaders import load_dataset
    from ..samples import make_samples

    t = config.train
    cuda = torch.cuda.is_available()
    try:
        lm, tok = load_backbone(model_name, dtype=torch.bfloat16 if cuda else torch.float32)
    except BackboneNotAvailable as e:
        raise NotAvailable(f"{model_name}: {e}") from None
    started = time.perf_counter()
    lm = lm.to("cuda" if cuda else "cpu").eval()
    bundle = load_dataset(t.dataset, mentions=t.redial_mentions)
    if t.test_split not in bundle.splits:
        raise ValueError(f"split '{t.test_split}' not found in {t.dataset}")
    samples = make_samples(bundle.splits[t.test_split])
    if t.max_eval_samples:
        samples = samples[: t.max_eval_samples]
    turns: dict[tuple, list] = {}
    for s in samples:
        turns.setdefault((s.dialogue_id, s.turn_index), []).append(s)
    groups = list(turns.values())
    max_new = config.model.response_max_tokens
    budget = min(PROMPT_MAX_TOKENS, getattr(lm.config, "max_position_embeddings", PROMPT_MAX_TOKENS) - max_new - 8)
    prompts, templated, kept = [], False, []
    line_tokens: dict[str, int] = {}  # each turn's line is tokenized once, not once per later turn
    for group in groups:
        lines = [turn_line(x, bundle.items) for x in group[0].context]
        new = [line for line in dict.fromkeys(lines) if line not in line_tokens]
        line_tokens.update(zip(new, line_token_counts(tok, new)))
        text, templated, k = build_prompt(tok, lines, budget, [line_tokens[line] for line in lines])
        prompts.append(text)
        kept.append(k)

    from transformers import GenerationConfig

    eos = lm.generation_config.eos_token_id if lm.generation_config.eos_token_id is not None else tok.eos_token_id
    gen_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new,
                                  pad_token_id=tok.pad_token_id, eos_token_id=eos)
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses = [""] * len(prompts)
    bs = max(1, config.inference.batch_size)
    with torch.no_grad():
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=not templated).to(lm.device)
            out = lm.generate(**enc, generation_config=gen_config)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                responses[i] = clean_response(text)
            if progress:
                print(f"  generated {min(start + bs, len(order))}/{len(order)}", flush=True)

    refs = [fill(group[0].response.text, group[0].response.items, bundle.items) for group in groups]
    examples = []
    for group, resp, ref, k in list(zip(groups, responses, refs, kept))[:5]:
        examples.append({"dialogue_id": group[0].dialogue_id, "turn_index": group[0].turn_index,
                         "context_turns_kept": k, "reference": ref, "generated": resp,
                         "targets": [bundle.items[s.target].display() for s in group
                                     if s.target is not None and s.target in bundle.items]})
    rouge = metrics.rouge_1_2(responses, refs) if responses else {"rouge1": None, "rouge2": None}
    rouge.update(rouge_as_the_paper_scored_llms(groups, responses, refs))
    return {"model": model_name, "chat_template": templated, "dtype": "bfloat16" if cuda else "float32",
            "decoding": "greedy", "max_new_tokens": max_new, "prompt_max_tokens": budget, "system_prompt": SYSTEM,
            "n_turns": len(groups), **score_hits(groups, responses, bundle.items), **rouge,
            "seconds": round(time.perf_counter() - started, 2), "examples": examples}


def score_hits(groups: list[list], responses: list[str], items: dict) -> dict:
    """Table 7's recommendation figures of the replies: a sample with a target is a hit when its
    turn's reply names the target's title as whole words (`mentions`); R@1 = R@10 = R@50 is the
    hit rate (a reply is one ranked list of the films it names); Unique counts the distinct films
    hit. The honest variant (as dedup recall) counts only targets not mentioned earlier in the
    dialogue. groups: the samples of each turn, row for row with `responses`."""
    rec_n = hits = dedup_n = dedup_hits = 0
    hit_items, hit_list = set(), []
    for group, resp in zip(groups, responses, strict=True):
        for s in group:
            if s.target is None:
                continue
            rec_n += 1
            dedup_n += not s.target_seen_before
            title = items[s.target].title if s.target in items else s.target
            if mentions(resp, title):
                hits += 1
                dedup_hits += not s.target_seen_before
                hit_items.add(s.target)
                hit_list.append({"dialogue_id": s.dialogue_id, "turn_index": s.turn_index, "target": title,
                                 "mentioned_earlier": s.target_seen_before})
    rate = hits / rec_n if rec_n else None
    return {"n_rec_samples": rec_n, "hits": hits, "recall@1": rate, "recall@10": rate, "recall@50": rate,
            "unique": len(hit_items), "n_dedup_samples": dedup_n, "dedup_hits": dedup_hits,
            "dedup_recall@1": dedup_hits / dedup_n if dedup_n else None, "hit_samples": hit_list}


def rouge_as_the_paper_scored_llms(groups: list[list], responses: list[str], refs: list[str]) -> dict:
    """ROUGE-1/2 of the zero-shot replies as the paper's zero-shot script (zero_shot_llms.py)
    scored its LLMs: "Recommender: " before reply and reference, one pair per sample with a target
    (a k-item turn k times), titles in the reference. groups: the samples of each turn, row for
    row with `responses` and `refs`. Keys rouge1_paper_protocol, rouge2_paper_protocol (None
    without a pair)."""
    paired = [(reply, ref) for group, reply, ref in zip(groups, responses, refs, strict=True)
              for s in group if s.target is not None]
    if not paired:
        return {"rouge1_paper_protocol": None, "rouge2_paper_protocol": None}
    return metrics.rouge_1_2_paper_protocol([p for p, _ in paired], [r for _, r in paired],
                                            speaker_tag=RELEASED_ZERO_SHOT_SPEAKER_TAG)


def models(ctx: Context) -> list[str]:
    return list(ctx.options.get("models") or DEFAULT_MODELS)


def plan_table7(ctx: Context):
    cfg = ctx.configs[ctx.primary]
    parts = []
    for name in models(ctx):
        parts.append(Part(name=f"zs-{name}", kind="eval",
                          run=lambda name=name: zero_shot(name, cfg, ctx.progress),
                          spec={"model": name, "prompt_version": PROMPT_VERSION, "prompt_max_tokens": PROMPT_MAX_TOKENS},
                          dataset=ctx.primary, config=cfg, describe=f"zero-shot {name} on {dataset_label(cfg)}"))
    return parts


def pecrs_from_main(ctx: Context) -> dict | None:
    """Our trained PECRS on the same data, if the `main` experiment measured it in the same folder."""
    from .tables import plan_main

    main_ctx = Context(name="main", root=ctx.root, configs={ctx.primary: ctx.configs[ctx.primary]},
                 accept_partial=ctx.accept_partial)
    return records(main_ctx, plan_main(main_ctx)).get(f"{ctx.primary}-test")


def report_table7(ctx: Context, recs: dict, status: dict) -> Report:
    cfg = ctx.configs[ctx.primary]
    rows, summary = [], {}
    for model, p in paper.TABLE7.items():
        # The paper's ROUGE is its code's (speaker tag on both sides): the *_paper_protocol columns.
        rows.append([f"{model} (paper)"] + [pcell(v, f) for v, f in zip(p, (".1f", ".1f", ".1f", "int", ".2f", ".2f"))]
                    + ["—"] * 4)
    main = pecrs_from_main(ctx)
    if main is not None:
        r = main["result"]
        rows.append([f"PECRS, ours ({cfg.model.backbone}; from `main`)"]
                    + [fmt(r.get(f"recall@{k}"), "pct") for k in (1, 10, 50)] + [fmt(r.get("unique"), "int")]
                    + [fmt(r.get(k)) for k in ROUGE_COLUMNS] + [fmt(r.get("n_rec_samples"), "int"),
                                                               fmt(r.get("dedup_recall@1"), "pct")])
    for name in models(ctx):
        rec = recs.get(f"zs-{name}")
        r = rec["result"] if rec else {}
        ok = rec is not None
        reason = (status.get(f"zs-{name}") or {}).get("reason")
        summary[name] = {"measured": ok, "ours": {k: v for k, v in r.items() if k != "examples"} if ok else None,
                         "reason": None if ok else reason}
        cells = ([fmt(r.get(f"recall@{k}"), "pct", ok) for k in (1, 10, 50)] + [fmt(r.get("unique"), "int", ok)]
                 + [fmt(r.get(k), "num", ok) for k in ROUGE_COLUMNS]
                 + [fmt(r.get("n_rec_samples"), "int", ok), fmt(r.get("dedup_recall@1"), "pct", ok)])
        label = f"{name}, zero-shot (ours)"
        if not ok and reason:
            label += f" — {NOT_RUN}: {reason.splitlines()[0][:120]}"
        rows.append([label] + cells)
    md = [f"## Table 7: zero-shot LMs ({dataset_label(cfg)} {cfg.train.test_split})", "",
          md_table(["Model", "R@1", "R@10", "R@50", "Unique", "RG-1 (paper's code)", "RG-2 (paper's code)", "RG-1",
                    "RG-2", "samples", "dedup R@1"], rows), "",
          "Hit = the ground-truth title appears in the generated response (R@1 = R@10 = R@50 = hit rate, "
          "Unique = distinct ground-truth movies hit). dedup R@1: hit rate over the samples whose target was "
          "not mentioned earlier in the dialogue (not in the paper). Greedy decoding; bfloat16 on a GPU, "
          "float32 on a CPU. "
          "Paper: INSPIRED, 7B chat LLMs vs PECRS-small; ours: the instruct LMs available offline. "
          "*RG (paper's code)*: scored as the paper's scripts scored its rows, so beside its numbers: for the "
          "zero-shot LMs \"Recommender: \" before reply and reference, one pair per sample with a target (a "
          "k-item turn k times); for PECRS \"A: \" before both and [ITEM] as \"[MOVIE_ID]\", every turn. "
          "RG-1/RG-2: the texts as they are, one pair per turn.", ""]
    return Report(summary=summary, markdown="\n".join(md))
