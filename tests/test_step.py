"""The training step (pecrs.step): host/device split, static shapes, batch semantics, step modes."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pecrs.config import RunConfig
from pecrs.step import StepRunner, cast_frozen, item_slots, plan_step, scaled_lr, step_losses
from pecrs.testing import step_setup
from pecrs.tokens import collate, static_widths
from pecrs.train import total_loss


def _losses(model, store, inputs, cfg):
    losses = step_losses(model, store, inputs, cfg.train)
    return losses, total_loss(losses, cfg)


class HostDataUse(TorchDispatchMode):
    """Records every op that touches a non-meta tensor of more than one element while the model
    runs on the meta device: on a GPU each of those is a host<->device copy or a host tensor in
    the step. Reading a value on the host (`.item()`, `bool()`, boolean-mask indexing) raises
    outright on meta tensors."""

    def __init__(self):
        super().__init__()
        self.offending = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs, out)) if isinstance(a, torch.Tensor)]
        if any(t.device.type != "meta" and t.dim() > 0 for t in tensors):
            self.offending.append(str(func))
        return out


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("static", [False, True])
def test_step_never_synchronises_nor_copies_from_the_host(backbone, static):
    cfg, model, store, encoder, encoded = step_setup(backbone)
    widths = static_widths(encoder) if static else (None, None)
    batch = collate(encoded[:4], model.tokenizer.pad_token_id, model.rec_end_id, *widths)
    inputs = plan_step(batch, len(store), cfg.train, torch.Generator().manual_seed(0),
                       candidates=True if static else None,
                       slots=item_slots(encoded, 4, cfg.train) if static else None)
    model.train()
    model.to("meta")
    store.to("meta")
    inputs = inputs.to("meta")
    with HostDataUse() as spy:
        losses, loss = _losses(model, store, inputs, cfg)
        loss.backward()
    assert loss.device.type == "meta"
    assert spy.offending == []


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
def test_static_shapes_give_the_dynamic_losses(backbone):
    cfg, model, store, encoder, encoded = step_setup(backbone)
    model.train()
    pad, rec_end = model.tokenizer.pad_token_id, model.rec_end_id
    widths = static_widths(encoder)
    assert max(len(e.context_ids) for e in encoded) < widths[0]  # the padding is real
    for rows in (encoded[:4], [e for e in encoded if e.target < 0][:2]):  # with targets, then none
        dynamic = plan_step(collate(rows, pad, rec_end), len(store), cfg.train, torch.Generator().manual_seed(1))
        static = plan_step(collate(rows, pad, rec_end, *widths), len(store), cfg.train,
                           torch.Generator().manual_seed(1), candidates=True,
                           slots=item_slots(encoded, len(rows), cfg.train))
        assert static.batch.context_ids.shape[1] == widths[0] and static.batch.gen_ids.shape[1] == widths[1]
        assert static.rerank_negatives.shape[1] == cfg.train.m_train
        assert len(static.vector_items) == item_slots(encoded, len(rows), cfg.train)
        a, _ = _losses(model, store, dynamic, cfg)
        b, _ = _losses(model, store, static, cfg)
        for k in ("recall", "rerank", "gen"):
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5), (k, a[k], b[k])
        assert a["gen"].item() > 0


def test_batch_loss_is_the_mean_of_its_rows():
    cfg, model, store, encoder, encoded = step_setup("tiny-llama")
    model.train()
    batch = collate(encoded[:8], model.tokenizer.pad_token_id, model.rec_end_id)
    inputs = plan_step(batch, len(store), cfg.train, torch.Generator().manual_seed(2), candidates=True)
    _, whole = _losses(model, store, inputs, cfg)
    rows = [_losses(model, store, inputs.select(slice(i, i + 1)), cfg)[1] for i in range(8)]
    assert torch.allclose(whole, torch.stack(rows).mean(), atol=1e-5)
    # "targets" normalisation divides recall and rerank by the rows that have a target instead.
    cfg.train.loss_normalization = "targets"
    per_target, _ = _losses(model, store, inputs, cfg)
    cfg.train.loss_normalization = "batch"
    per_row, _ = _losses(model, store, inputs, cfg)
    n_targets = int((inputs.batch.target >= 0).sum())
    assert 0 < n_targets < 8
    assert torch.allclose(per_target["recall"] * n_targets / 8, per_row["recall"], atol=1e-5)


def test_plan_step_negatives():
    cfg = RunConfig()
    t = cfg.train
    t.m_train, t.recall_pool = 4, 10
    from pecrs.tokens import Batch
    B, n_items = 5, 40
    target = torch.tensor([3, -1, 7, 7, 11])
    z = torch.zeros(B, 2, dtype=torch.long)
    batch = Batch(z, z - 1, torch.full((B,), 2), z, z - 1, torch.full((B,), 2), z - 100, target)
    for seed in range(20):
        s = plan_step(batch, n_items, t, torch.Generator().manual_seed(seed))
        pool = set(s.recall_negatives[0].tolist())
        assert len(pool) == 10 and not pool & {3, 7, 11}
        assert (s.recall_negatives == s.recall_negatives[0]).all()          # shared across the batch
        for i in range(B):                                                  # rerank ⊂ recall (shared tasks)
            assert set(s.rerank_negatives[i].tolist()) <= pool and len(set(s.rerank_negatives[i].tolist())) == 4
        assert len({tuple(r) for r in s.rerank_negatives.tolist()}) > 1      # rows see different windows
        assert ((0 <= s.place) & (s.place <= 4)).all()
        # every item the step touches has a vector row, and rows point back to their item
        used = torch.cat([s.recall_negatives.flatten(), s.rerank_negatives.flatten(), target[target >= 0]])
        assert (s.vector_row[used] >= 0).all()
        assert torch.equal(s.vector_items[s.vector_row[used]], used)
    # the paper: the pool is M_train, identical for both tasks
    t.recall_pool = None
    s = plan_step(batch, n_items, t, torch.Generator().manual_seed(0))
    assert torch.equal(s.recall_negatives, s.rerank_negatives)
    # no target in the batch: no candidates laid out unless asked
    no_target = Batch(*[getattr(batch, f) for f in ("context_ids", "context_items", "context_len", "gen_ids",
                                                   "gen_items", "gen_len", "gen_labels")], torch.full((B,), -1))
    assert plan_step(no_target, n_items, t, torch.Generator()).rerank_negatives.shape == (B, 0)
    assert plan_step(no_target, n_items, t, torch.Generator(), candidates=True).rerank_negatives.shape == (B, 4)
    # the ablation w/o negative sharing across the batch: each row its own pool, still no positive
    t.recall_pool, t.share_negatives_batch = 10, False
    s = plan_step(batch, n_items, t, torch.Generator().manual_seed(0))
    assert s.recall_negatives.shape == (B, 10) and len({tuple(r) for r in s.recall_negatives.tolist()}) > 1
    assert not set(s.recall_negatives.flatten().tolist()) & {3, 7, 11}


def test_fixed_item_slots_hold_targets_outside_the_context():
    """Static shapes fix the item rows of a step (`item_slots`): a batch whose targets are not
    mentioned in its contexts touches context items, targets and negatives, and must fit."""
    from pecrs.tokens import EncodedSample

    t = RunConfig().train
    t.m_train = 4
    encoded = [EncodedSample([5, 6, 1], [-1, 2 * i, -1], [7], [8], 2 * i + 1) for i in range(4)]   # 8 items
    slots = item_slots(encoded, 4, t, 100)
    inputs = plan_step(collate(encoded, 0, 1), 100, t, torch.Generator().manual_seed(0), candidates=True, slots=slots)
    assert len(inputs.vector_items) == slots


def test_total_loss_weights_each_loss_by_its_own_coefficient():
    """Eq. 8: α·recall + β·rerank + γ·generation."""
    cfg = RunConfig()
    t = cfg.train
    t.alpha, t.beta, t.gamma = 0.15, 0.85, 1.0
    losses = {"recall": torch.tensor(1.0), "rerank": torch.tensor(10.0), "gen": torch.tensor(100.0)}
    assert math.isclose(float(total_loss(losses, cfg)), 0.15 + 8.5 + 100.0, rel_tol=1e-6)


def test_auto_step_mode_captures_graphs_only_on_a_gpu_with_static_shapes():
    from pecrs.step import resolve_step_mode

    assert resolve_step_mode("auto", torch.device("cuda"), True) == "cudagraphs"
    assert resolve_step_mode("auto", torch.device("cuda"), False) == "eager"   # every new shape a capture
    assert resolve_step_mode("auto", torch.device("cpu"), True) == "eager"
    assert resolve_step_mode("compile", torch.device("cpu"), False) == "compile"
    with pytest.raises(ValueError, match="step_mode"):
        resolve_step_mode("fast", torch.device("cpu"), True)


def test_scaled_lr_square_root_rule():
    t = RunConfig().train
    assert scaled_lr(t, 64) == t.lr                      # the paper's configs: lr as written
    t.lr, t.lr_reference_batch = 1e-4, 2
    assert math.isclose(scaled_lr(t, 32), 4e-4)
    assert math.isclose(scaled_lr(t, 2), 1e-4)


def test_compiled_step_equals_eager_and_failure_falls_back(caplog):
    cfg, model, store, encoder, encoded = step_setup("tiny-llama")
    model.train()
    widths = static_widths(encoder)
    inputs = plan_step(collate(encoded[:4], model.tokenizer.pad_token_id, model.rec_end_id, *widths), len(store),
                       cfg.train, torch.Generator().manual_seed(3), candidates=True,
                       slots=item_slots(encoded, 4, cfg.train))
    eager = StepRunner(model, "eager")(store, inputs, cfg.train)
    # backend "eager": dynamo traces the step into a graph and runs it without code generation (fast on CI).
    compiled = StepRunner(model, "compile", backend="eager")
    assert compiled.compiled
    out = compiled(store, inputs, cfg.train)
    for k in ("recall", "rerank", "gen"):
        assert torch.allclose(eager[k], out[k], atol=1e-6)
    # A backend that cannot compile: the first call raises, the runner falls back and says why.
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no graph capture here")
    runner = StepRunner(model, "compile", backend=broken_backend)
    with pytest.raises(Exception):
        runner(store, inputs, cfg.train)
    with caplog.at_level("WARNING"):
        runner.fall_back(RuntimeError("no graph capture here"))
    assert not runner.compiled and runner.mode == "eager" and "no graph capture here" in runner.fallback_reason
    assert "running eager instead" in caplog.text
    again = runner(store, inputs, cfg.train)
    assert torch.allclose(again["gen"], eager["gen"], atol=1e-6)


def test_frozen_bfloat16_weights_keep_the_losses():
    cfg, model, store, encoder, encoded = step_setup("tiny-llama")
    model.train()
    inputs = plan_step(collate(encoded[:4], model.tokenizer.pad_token_id, model.rec_end_id), len(store), cfg.train,
                       torch.Generator().manual_seed(4))
    ref, _ = _losses(model, store, inputs, cfg)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert cast_frozen(model, torch.bfloat16) > 0
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, loss = _losses(model, store, inputs, cfg)
    loss.backward()
    for k in ("recall", "rerank", "gen"):
        assert abs(low[k].item() - ref[k].item()) < 0.05 * abs(ref[k].item()) + 0.02, k
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)


def test_config_mistakes_of_the_step_settings_are_caught_before_loading(tmp_path):
    from pecrs.config import ConfigError, RunConfig
    from pecrs.train import train

    with pytest.raises(ConfigError, match="recall_pool"):
        RunConfig.load("tiny", ["train.m_train=24", "train.recall_pool=10"])
    with pytest.raises(ConfigError, match="recall_pool"):      # the bound: at least M_train
        RunConfig.load("tiny", ["train.m_train=24", "train.recall_pool=23"])
    assert RunConfig.load("tiny", ["train.m_train=24", "train.recall_pool=24"]).train.recall_pool == 24
    cfg = RunConfig.load("tiny", ["train.frozen_dtype=bfloat16", "train.mixed_precision='no'"])
    with pytest.raises(ValueError, match="needs bfloat16 autocast"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last").exists()


class _FailingBackward(torch.autograd.Function):
    """Identity whose backward fails: a compiled step's backward that breaks midway."""
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("graph replay failed")


@pytest.mark.parametrize("fails_in", ["forward", "backward"])
def test_fallback_mid_update_keeps_the_earlier_micro_batches(tmp_path, fails_in):
    """grad_accum=2 and a compiled step that fails on the update's second micro-batch, in its
    forward or in its backward (after part of its gradients were added): the eager rerun adds to
    the first micro-batch's gradients alone, so the run trains as an eager run does."""
    import json

    from torch._dynamo import register_backend
    from safetensors.torch import load_file

    from pecrs.testing import tiny_config, write_dataset
    from pecrs.train import train

    calls = {"n": 0}
    backend = f"pecrs_test_fails_in_{fails_in}_on_second_call"

    @register_backend(name=backend)
    def fails_on_second_call(gm, example_inputs):
        def run(*args):
            calls["n"] += 1
            if calls["n"] == 2 and fails_in == "forward":
                raise RuntimeError("graph replay failed")
            if calls["n"] == 2:   # the first trainable leaf's gradient fails; others are added first
                first = next(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad)
                args = (*args[:first], _FailingBackward.apply(args[first]), *args[first + 1:])
            return gm.forward(*args)
        return run

    write_dataset(tmp_path / "data")
    weights = {}
    for mode in ("eager", "compile"):
        cfg = tiny_config(tmp_path / "data")
        t = cfg.train
        t.epochs, t.batch_size, t.grad_accum, t.checkpoint_every, t.dev_split = 1, 2, 2, 0, ""
        t.warmup_epochs = 0
        t.max_train_samples, t.step_mode, t.compile_backend = 8, mode, backend
        cfg.model.lora_dropout = 0.0
        train(cfg, tmp_path / mode, progress=False)
        last = tmp_path / mode / "last"
        weights[mode] = {**load_file(last / "adapter" / "adapter_model.safetensors"),
                         **load_file(last / "heads.safetensors")}
        if mode == "compile":
            record = json.loads((tmp_path / mode / "metrics.jsonl").read_text().splitlines()[-1])
            assert "graph replay failed" in record["step_mode_fallback"]
    assert calls["n"] == 2  # the first micro-batch ran compiled, the second failed, the rest ran eager
    for name, tensor in weights["eager"].items():
        assert torch.allclose(tensor, weights["compile"][name], atol=1e-6), name
