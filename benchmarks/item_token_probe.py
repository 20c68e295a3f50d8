"""How likely a model makes [ITEM] where a reply names an item, and how fast the special-token rows learn it (CPU).

    python benchmarks/item_token_probe.py [CHECKPOINT] [--split test] [--samples 40]
                                          [--train-steps 60 --lr 1e-3 --every 20]

Teacher-forced, on the first --samples recommender turns of --split that recommend an item (the
layout of training, Eq. 6-7, with the ground-truth item injected): at every position whose
reference token is [ITEM], the probability the model gives [ITEM], how many tokens it ranks above,
and the tokens it ranks first there. A model that puts the first digit of a year there writes
years in place of titles, and F-1 of [ITEM] (§4.1) is 0.

With --train-steps N it then trains the four special-token rows alone ([ITEM], [SEP], [REC],
[REC_END]; LoRA and heads frozen, no dropout) on the generation loss over the training samples
that recommend an item, batch 4, constant --lr, and measures again every --every updates: how far
the rows' learning rate, not the rest of the model, holds [ITEM] back
(`train.special_token_lr_scale`, docs/results.md "Why the replies were numbers").
CHECKPOINT: a run folder, a checkpoint folder or a shipped model name (default: inspired).
"""
from __future__ import annotations

import random
import time

import _common as C
import torch


def generation_losses(model, store, encoded) -> dict:
    """The teacher-forced generation losses of `encoded` (no items scored), as `training_losses` gives them."""
    from pecrs.step import vector_slots
    from pecrs.tokens import collate

    batch = collate(encoded, model.tokenizer.pad_token_id, model.rec_end_id)
    items, row = vector_slots(len(store), batch.target, batch.context_items, batch.gen_items)
    empty = torch.zeros(len(batch.target), 0, dtype=torch.long)
    return batch, model.training_losses(batch, store.vectors(model, items), row, empty, empty, score_items=False)


def item_positions(model, store, encoded, item_id: int, batch_size: int = 8) -> dict:
    """p([ITEM]) at the reference [ITEM] positions of `encoded`, its rank, the argmax tokens."""
    captured = {}
    hook = model.causal_lm.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: captured.__setitem__("logits", output))
    probs, ranks, first = [], [], {}
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch, _ = generation_losses(model, store, encoded[start:start + batch_size])
                p = captured["logits"].float().softmax(-1)[batch.gen_labels == item_id]   # [n, V]
                probs.append(p[:, item_id])
                ranks.append((p > p[:, item_id:item_id + 1]).sum(-1))
                for token in p.argmax(-1).tolist():
                    first[token] = first.get(token, 0) + 1
    finally:
        hook.remove()
    probs, ranks = torch.cat(probs), torch.cat(ranks)
    top = sorted(first.items(), key=lambda kv: -kv[1])[:6]
    return {"positions": len(probs), "mean_p_item": round(float(probs.mean()), 6),
            "median_rank_item": int(ranks.median()) if len(ranks) else None,
            "item_ranked_first": int((ranks == 0).sum()),
            "ranked_first_tokens": [[model.tokenizer.decode([t]), n] for t, n in top]}


def train_rows(model, store, train, test, item_id: int, args) -> list[dict]:
    """Train the special-token rows alone on the generation loss; measure every args.every updates."""
    rows = [p for n, p in model.named_parameters() if "trainable_tokens_delta" in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in rows:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(rows, lr=args.lr, weight_decay=0.0)
    random.Random(args.seed).shuffle(train)
    curve, started = [], time.perf_counter()
    for step in range(1, args.train_steps + 1):
        chunk = [train[(4 * (step - 1) + i) % len(train)] for i in range(4)]
        loss = generation_losses(model, store, chunk)[1]["gen"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.train_steps:
            curve.append({"updates": step, "gen_loss": round(loss.item(), 3),
                          "seconds": round(time.perf_counter() - started, 1),
                          **item_positions(model, store, test, item_id)})
    return curve


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="inspired")
    p.add_argument("--split", default="test")
    p.add_argument("--samples", type=int, default=40, help="recommender turns with a target, from the split's start")
    p.add_argument("--dataset", default=None, help="dataset folder (default: the one the model trained on)")
    p.add_argument("--train-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.samples, args.train_steps, args.every = min(args.samples, 8), min(args.train_steps, 4), 2
    C.set_threads(args.threads)
    ckpt, model, config, setup = C.trained_model(args.checkpoint, args.dataset)
    item_id = model.tokenizer.convert_tokens_to_ids("[ITEM]")
    turns = [s for s in setup.samples[args.split] if not s.repeated and s.target is not None][:args.samples]
    test = setup.encoder.encode_all(turns)
    train = setup.encoder.encode_all([s for s in setup.samples[config.train.train_split] if s.target is not None])
    result = {"checkpoint": str(ckpt), "split": args.split, "turns": len(test),
              "special_token_lr_scale": config.train.special_token_lr_scale}
    with model.lm.disable_adapter():
        result["base_lm"] = item_positions(model, setup.store, test, item_id)
    result["model"] = item_positions(model, setup.store, test, item_id)
    if args.train_steps:
        result["rows_only"] = {"lr": args.lr, "batch": 4,
                               "curve": train_rows(model, setup.store, train, test, item_id, args)}
    last = result["rows_only"]["curve"][-1] if args.train_steps else None
    summary = (f"p([ITEM]) at {result['model']['positions']} reference [ITEM] positions: "
               f"{result['model']['mean_p_item']:.2e} (base LM {result['base_lm']['mean_p_item']:.2e})")
    if last:
        summary += f"; rows alone at lr {args.lr}, {last['updates']} updates: {last['mean_p_item']:.3f}"
    C.emit(args, result, f"{summary} ({C.cpu_model()})")


if __name__ == "__main__":
    main()
