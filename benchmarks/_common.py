"""Shared plumbing for the benchmarks: machine description, timing statistics, model and data setup.

Every benchmark prints one JSON object (the figures plus the machine they were taken on) and then
one line starting with "SUMMARY". `--json-out PATH` also writes the JSON to a file.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

START_LOAD = None  # set on first use of parser(): the load average when the benchmark started
DATASETS = Path(os.environ.get("PECRS_DATASETS", REPO.parent / "shared" / "datasets"))


# ----- command line and output -------------------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    global START_LOAD
    START_LOAD = load_average()
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats / smaller inputs (smoke run)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: every core the process may use)")
    p.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    p.add_argument("--stock-peft-tokens", action="store_true",
                   help="the 'before' figure: peft's own TrainableTokensLayer forward (copies the whole "
                        "embedding matrix per call) instead of pecrs.backbone's row-only forward")
    return p


def set_threads(n: int | None) -> int:
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def cpu_model() -> str:
    from pecrs.precision import cpu_model as model_name

    return model_name()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import peft
    import transformers

    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15_at_start": START_LOAD,
        "load_avg_1_5_15_at_end": load_average(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(args, result: dict, summary: str) -> None:
    result = {**result, "machine": machine()}
    if getattr(args, "stock_peft_tokens", False):
        result["variant"] = "stock peft TrainableTokensLayer (before)"
        summary = "[stock peft tokens] " + summary
    text = json.dumps(result, indent=1)
    print(text)
    print("SUMMARY " + summary)
    if getattr(args, "json_out", None):
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")


# ----- timing --------------------------------------------------------------------------------------

def summarize(seconds: list[float]) -> dict:
    """median / p95 / min / mean of a list of durations (seconds), rounded to the millisecond."""
    xs = sorted(seconds)
    if not xs:
        return {"n": 0}
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * len(xs)) - 1))]
    return {"n": len(xs), "median": round(statistics.median(xs), 4), "p95": round(p95, 4),
            "min": round(xs[0], 4), "mean": round(statistics.fmean(xs), 4)}


def timed(fn, *args, sync=None, **kwargs):
    """(result, seconds) of one call; `sync` (e.g. torch.cuda.synchronize) runs before both clocks."""
    if sync:
        sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if sync:
        sync()
    return out, time.perf_counter() - start


# ----- models and data -----------------------------------------------------------------------------

def run_config(backbone: str, **train):
    from pecrs.config import RunConfig

    cfg = RunConfig()
    cfg.model.backbone = backbone
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def build(cfg, seed: int = 0, stock_peft_tokens: bool = False):
    from pecrs.pretrained import build_model

    model = build_model(cfg, seed=seed)
    if stock_peft_tokens:
        use_stock_peft_tokens(model)
    return model


def use_stock_peft_tokens(model) -> None:
    """Undo pecrs.backbone.use_row_trainable_tokens (for before/after figures)."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for module in model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.__class__ = TrainableTokensLayer


def catalog(model, cfg, dataset: str = "inspired"):
    """The dataset's ItemStore (tokenised item texts; no LM states computed yet)."""
    from pecrs.catalog import ItemStore
    from pecrs.loaders import load_items

    items = load_items(DATASETS / dataset / "items.jsonl")
    return ItemStore(list(items.values()), model.tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens,
                     cfg.model.item_encoding)


def fake_cached_states(store, hidden: int, seed: int = 0, dtype=torch.float16):
    """Put random token states of the right shape in `store` ("cached" mode) without running the LM.
    The cost of a training step does not depend on their values; catalog_encoding.py times the
    real computation."""
    g = torch.Generator().manual_seed(seed)
    store.states = torch.randn(len(store), store.input_ids.shape[1], hidden, generator=g).to(dtype)
    store.mode = "cached"
    return store


def synthetic_encoded(tokenizer, n: int, n_items: int, context_tokens: int = 256, response_tokens: int = 64,
                      item_slots: int = 4, seed: int = 0):
    """`n` EncodedSamples at the maximum lengths of the paper's settings: `context_tokens` context
    tokens (with `item_slots` item slots) then [REC]; "Recommender:"; `response_tokens` + EOS; a target."""
    from pecrs.data import REC
    from pecrs.tokens import NO_ITEM, EncodedSample

    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(min(len(tokenizer), 32000)) if i not in special])
    rec = tokenizer.convert_tokens_to_ids(REC)
    prompt = tokenizer("Recommender:", add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        ids = pool[torch.randint(len(pool), (context_tokens,), generator=g)].tolist()
        items = [NO_ITEM] * context_tokens
        for pos in torch.linspace(10, context_tokens - 10, item_slots).long().tolist():
            ids[pos], items[pos] = 0, int(torch.randint(n_items, (1,), generator=g))
        response = pool[torch.randint(len(pool), (response_tokens,), generator=g)].tolist()
        out.append(EncodedSample(ids + [rec], items + [NO_ITEM], prompt, response + [tokenizer.eos_token_id],
                                 int(torch.randint(n_items, (1,), generator=g))))
    return out


def trained_model(model_name: str, dataset: str | None):
    """(checkpoint folder, model in eval mode, its config, `pecrs.prepare.prepare` of `dataset` (None:
    the one the model trained on) with the checkpoint's saved item vectors) for a shipped model's
    name or a run/checkpoint folder."""
    from pecrs.pretrained import checkpoint_dir, load_pretrained
    from pecrs.prepare import prepare

    checkpoint = checkpoint_dir(model_name)
    model, config = load_pretrained(checkpoint)
    model.eval()
    setup = prepare(config, model=model, dataset=dataset, saved_vectors_from=checkpoint)
    return checkpoint, model, config, setup


def inspired_encoded(model, store, cfg, split: str = "train", with_target: bool | None = None):
    """Real INSPIRED samples of `split`, encoded for `model`'s tokenizer."""
    from pecrs.loaders import load_dataset
    from pecrs.samples import make_samples
    from pecrs.tokens import DialogueEncoder

    bundle = load_dataset(DATASETS / "inspired")
    samples = make_samples(bundle.splits[split])
    if with_target is not None:
        samples = [s for s in samples if (s.target is not None) == with_target]
    encoder = DialogueEncoder(model.tokenizer, store.index, cfg.model.context_max_tokens,
                              cfg.model.response_max_tokens)
    return encoder.encode_all(samples)


def pecrs_step(model, store, batch, cfg, optimizer, seed: int = 0) -> float:
    """One PECRS training step as pecrs.train.train runs it: negatives, item vectors, the single
    masked forward, backward, AdamW step."""
    from pecrs.train import total_loss, training_step_losses

    torch.manual_seed(seed)
    losses = training_step_losses(model, store, batch, cfg, torch.Generator().manual_seed(seed))
    loss = total_loss(losses, cfg)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def lm_inputs(batch, pad_id: int):
    """A plain LM batch over the same tokens as a PECRS batch: context then generation segment per
    row (right-padded), labels on the response tokens only."""
    rows, labels = [], []
    for i in range(batch.context_ids.shape[0]):
        lc, lg = int(batch.context_len[i]), int(batch.gen_len[i])
        ids = torch.cat([batch.context_ids[i, :lc], batch.gen_ids[i, :lg]])
        # gen_labels[j] is the target of position j (next token); HF labels are the tokens themselves.
        target = torch.full_like(ids, -100)
        gl = batch.gen_labels[i, :lg]
        target[lc + 1:lc + lg] = gl[:-1]
        rows.append(ids)
        labels.append(target)
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    label_ids = torch.full((len(rows), L), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, labels)):
        input_ids[i, :len(r)], label_ids[i, :len(r)], mask[i, :len(r)] = r, t, 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids}


def plain_lm_step(lm, inputs: dict, optimizer, seed: int = 0, response_logits_only: bool = False) -> float:
    """A plain LoRA language-model step (forward with labels, backward, AdamW step).
    response_logits_only: compute the LM head on the last positions only (`logits_to_keep`), as a
    lean LM trainer would; the default is the usual `model(**batch, labels=...)`."""
    torch.manual_seed(seed)
    kwargs = dict(inputs)
    if response_logits_only:
        labels = kwargs.pop("labels")
        first = int((labels != -100).float().argmax(1).min()) - 1
        keep = labels.shape[1] - first
        out = lm(**kwargs, logits_to_keep=keep)
        logits = out.logits[:, :-1].float()
        target = labels[:, first + 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=-100)
    else:
        loss = lm(**kwargs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)
