"""How fast the recall stage can learn, with and without `model.item_standardize` (CPU).

    python benchmarks/recall_probe.py [--backbone smollm2-135m-instruct] [--passes 1 3]

Trains only the recall heads, f and h_item (pecrs.heads), on Eq. 3's loss over features of the
frozen base LM (LoRA at its zero init, no LM gradient): the [REC] states of INSPIRED's training
samples that recommend an item and the mean-pooled token states of the catalog. Batch 4, a shared
pool of 600 negatives, lr 1e-4 (constant: the recipe warms up and decays it), temperature 0.1: the
recall setting of the CPU recipe (configs/inspired-cpu.yaml), whose first full run left the recall
loss at chance. Prints, per variant and
number of passes, the recall loss over the first 50 and the last 100 updates, dev R@1/10/50/700 of
recall alone over the whole catalog, and the mean cosine between item vectors.

The features take one LM pass over ~2,600 contexts and 1,662 items (about 20 minutes on a 2-core
CPU); `--features FILE` keeps them for the next call. What the probe leaves out: LoRA and the
[REC] row learning, the re-ranking and generation losses, learned pooling weights.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import _common as C
import torch
import torch.nn.functional as F


def features(args) -> dict:
    """[REC] states (the input of f) per split, targets, and the catalog's pooled base states."""
    path = Path(args.features) if args.features else None
    made_from = {"backbone": args.backbone, "max_train": args.max_train, "dataset": str(C.DATASETS / "inspired")}
    if path and path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("made_from") == made_from:
            return saved
        print(f"{path} holds features of {saved.get('made_from')}: recomputing", file=sys.stderr)
    from pecrs.config import RunConfig
    from pecrs.prepare import prepare
    from pecrs.tokens import collate

    cfg = RunConfig()
    cfg.model.backbone, cfg.train.dataset = args.backbone, str(C.DATASETS / "inspired")
    cfg.train.targets_only, cfg.train.max_train_samples = True, args.max_train
    setup = prepare(cfg)
    model, store = setup.model.eval(), setup.store
    out = {"made_from": made_from, "pooled": store.base_pooled_states(model)}
    vectors = store.all_vectors(model)           # what the contexts' item slots read at init
    captured = []
    hook = model.f.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0].detach()))
    with torch.no_grad():
        for split in ("train", "dev"):
            encoded = setup.encoder.encode_all([s for s in setup.samples[split] if s.target is not None])
            captured.clear()
            for start in range(0, len(encoded), 16):
                batch = collate(encoded[start:start + 16], model.tokenizer.pad_token_id, model.rec_end_id)
                model.context_pass(batch.context_ids, batch.context_items, batch.context_len, vectors,
                                   keep_cache=False)
            out[f"{split}_rec"] = torch.cat(captured)
            out[f"{split}_target"] = torch.tensor([e.target for e in encoded])
    hook.remove()
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def train_heads(data: dict, standardize: bool, passes: int, args) -> dict:
    from pecrs.heads import ItemEncoder, recall_logits, two_layer_mlp
    from pecrs.retrieval import ExactIndex

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pooled = data["pooled"]
    n_items, d = pooled.shape
    f = two_layer_mlp(d, d)
    items = ItemEncoder(d, 1, pooling=False, standardize=standardize)  # input: pooled states as [N, 1, d]
    if standardize:
        items.fit_standardization(pooled)
    optimizer = torch.optim.AdamW(list(f.parameters()) + list(items.parameters()), lr=args.lr, weight_decay=0.0)
    queries, targets = data["train_rec"], data["train_target"]
    one = torch.ones(n_items, 1)
    losses = []
    for _ in range(passes):
        order = torch.randperm(len(queries), generator=generator)
        for start in range(0, len(order), args.batch):
            rows = order[start:start + args.batch]
            keep = torch.ones(n_items)
            keep[targets[rows]] = 0
            negatives = torch.multinomial(keep, args.pool, generator=generator)     # shared by the batch
            keys = torch.cat([targets[rows, None], negatives.expand(len(rows), -1)], 1)   # [b, 1 + pool]
            vectors = items(pooled[:, None], one)                                        # [N, d]
            logits = recall_logits(f(queries[rows]), vectors[keys], args.temperature)
            loss = F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with torch.no_grad():
        vectors = items(pooled[:, None], one)
        # The whole catalog, best first, by the exact search that evaluation and serving use.
        _, order = ExactIndex(vectors, args.temperature).search(f(data["dev_rec"]), n_items)
        rank = (order == data["dev_target"][:, None]).int().argmax(1)
        unit = F.normalize(vectors, dim=-1)
        off_diagonal = ~torch.eye(n_items, dtype=torch.bool)
    return {"standardize": standardize, "passes": passes, "updates": len(losses),
            "loss_first_50": round(sum(losses[:50]) / min(50, len(losses)), 3),
            "loss_last_100": round(sum(losses[-100:]) / min(100, len(losses)), 3),
            "chance_loss": round(float(torch.log(torch.tensor(args.pool + 1.0))), 3),
            **{f"dev_recall@{k}": round(100 * float((rank < k).float().mean()), 1) for k in (1, 10, 50, 700)},
            "item_cosine_mean": round(float((unit @ unit.T)[off_diagonal].mean()), 3)}


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 3])
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--pool", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="first N training samples (smoke runs)")
    p.add_argument("--features", default=None, help="cache the LM features in this file (reused when present)")
    args = p.parse_args()
    if args.quick:  # a smoke run: a slice of the training samples, one pass
        args.max_train, args.passes = args.max_train or 200, args.passes[:1]
    C.set_threads(args.threads)
    started = time.perf_counter()
    data = features(args)
    feature_s = time.perf_counter() - started
    pooled = data["pooled"]
    mean = pooled.mean(0)
    runs = [train_heads(data, standardize, passes, copy.copy(args))
            for passes in args.passes for standardize in (False, True)]
    result = {"backbone": args.backbone, "train_samples": len(data["train_rec"]), "dev_samples": len(data["dev_rec"]),
              "settings": {"lr": args.lr, "temperature": args.temperature, "batch": args.batch, "pool": args.pool},
              "pooled_state_norm": round(float(pooled.norm(dim=1).mean()), 2),
              "pooled_mean_vector_norm": round(float(mean.norm()), 2),
              "features_seconds": round(feature_s, 1), "runs": runs}
    best = {r["standardize"]: r for r in runs if r["passes"] == args.passes[0]}
    C.emit(args, result, f"{args.passes[0]} pass(es): dev R@50 {best[False]['dev_recall@50']} plain vs "
                         f"{best[True]['dev_recall@50']} standardized; item cosine {best[False]['item_cosine_mean']} "
                         f"vs {best[True]['item_cosine_mean']} ({C.cpu_model()})")


if __name__ == "__main__":
    main()
