"""One training step, split where the host ends and the device begins (§3.6).

    host    plan_step: collated batch -> negatives, the positive's place among the candidates,
            the catalog rows whose vectors the step needs. All randomness is drawn here from one
            seeded generator, so a step is reproducible and resumable.
    device  step_losses: item vectors (Eq. 1) and the three losses in one LM pass (Eq. 3–7).

With `model.item_encoding: cached` (the default) the device part never reads a device value on
the host and never builds a tensor from host data, so on a GPU the host prepares the next batch
while the current one runs (and the step can be captured as a CUDA graph). tests/test_step.py
checks this at the dispatcher level. "adapted" re-encodes the step's items and reads their
lengths on the host (`PECRS.item_token_states`): it syncs once a step.

With static shapes every step has the same tensor shapes: contexts and responses padded to their
maxima (`tokens.static_widths`), candidates laid out even in batches without a target, and the
item rows padded to `item_slots`. That is what `torch.compile` and CUDA graphs need.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import torch

from .catalog import ItemStore
from .config import TrainConfig
from .hard_negatives import draw_hard
from .tokens import Batch, EncodedSample

log = logging.getLogger(__name__)


@dataclass
class StepInputs:
    """Everything one step consumes; every tensor has B rows except the two item tensors."""
    batch: Batch
    recall_negatives: torch.Tensor   # [B, Mr] catalog indices, Mr = recall pool size
    rerank_negatives: torch.Tensor   # [B, M] catalog indices; M = 0: no candidates this step
    place: torch.Tensor              # [B] the positive's slot among the M + 1 candidates
    vector_items: torch.Tensor       # [U] catalog indices whose vectors the step computes
    vector_row: torch.Tensor         # [N_catalog] catalog index -> row of vector_items (-1: unused)

    def _map(self, fn) -> "StepInputs":
        return StepInputs(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device, non_blocking: bool = False) -> "StepInputs":
        return self._map(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "StepInputs":
        return self._map(lambda v: v.pin_memory())

    def select(self, rows) -> "StepInputs":
        """The rows `rows` of the batch (one process's share); the item tensors stay whole."""
        return StepInputs(self.batch.select(rows), self.recall_negatives[rows], self.rerank_negatives[rows],
                          self.place[rows], self.vector_items, self.vector_row)


def shard(inputs: StepInputs, rank: int, world: int, normalize: str = "batch") -> tuple[StepInputs, dict[str, float]]:
    """Process `rank`'s rows of a step planned for `world` processes (rows rank, rank + world, ...)
    and the factors its losses are multiplied by, so that the mean over processes of their
    gradients (what DDP computes) is the gradient of the whole batch's losses, as one process
    running the whole batch would get it.

    The losses are means over a process's own rows (generation; recall and rerank with
    normalize="batch") or over its rows with a target ("targets"), so a process with b of the
    B rows (t of the T targets) weighs world·b/B (world·t/T). They are all 1 when the rows and
    targets split evenly; they matter for the last, short batch of an epoch and for targets. A
    process left without rows (a last batch shorter than `world`) runs row 0 with weight 0, so
    that every process runs the same step and every parameter gets its (zero) gradient. Host
    arithmetic only: nothing here waits for a device."""
    B = len(inputs.batch.target)
    rows = torch.arange(rank, B, world)
    if len(rows) == 0:
        return inputs.select(torch.zeros(1, dtype=torch.long)), {"recall": 0.0, "rerank": 0.0, "gen": 0.0}
    has_target = inputs.batch.target >= 0
    gen = world * len(rows) / B
    if normalize == "targets":
        scored = world * max(int(has_target[rows].sum()), 1) / max(int(has_target.sum()), 1)
    else:
        scored = gen
    return inputs.select(rows), {"recall": scored, "rerank": scored, "gen": gen}


def recall_pool_size(t: TrainConfig) -> int:
    """Negatives in the recall softmax: `recall_pool`, or M_train (the paper)."""
    return t.recall_pool or t.m_train


def negative_slots(t: TrainConfig, rows: int) -> int:
    """Most distinct negatives a step of `rows` rows draws (for fixed item slots): the random
    sets, and each row's own hard negatives (`pecrs.hard_negatives`)."""
    per_set = rows if not t.share_negatives_batch else 1
    rerank_extra = 0 if t.share_negatives_tasks else t.m_train
    return per_set * (recall_pool_size(t) + rerank_extra) + rows * t.hard_negatives


def item_slots(encoded: list[EncodedSample], rows: int, t: TrainConfig, n_items: int | None = None) -> int:
    """A fixed number of item rows that covers any batch of `rows` samples of `encoded`:
    the negatives plus `rows` times the most distinct items one sample touches, at most the
    catalog's `n_items` (a step never touches more)."""
    per_sample = max((len({i for i in e.context_items if i >= 0} | ({e.target} if e.target >= 0 else set()))
                      for e in encoded), default=0)
    slots = negative_slots(t, rows) + rows * per_sample
    return slots if n_items is None else min(slots, n_items)

def sample_negatives(n_items: int, avoid: torch.Tensor, m: int, rows: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """M catalog indices that are none of `avoid` (the batch's positives, §3.6, and its hard
    negatives), drawn uniformly without replacement (fewer when fewer are left).
    rows=None: one shared set [M]; rows=B: an independent set per row [B, M] (ablation)."""
    weights = torch.ones(n_items)
    weights[avoid.cpu()] = 0
    m = max(0, min(m, int(weights.sum())))
    if not m:   # every negative is a hard one, or nothing is left to draw
        return torch.zeros((0,) if rows is None else (rows, 0), dtype=torch.long)
    if rows is None:
        return torch.multinomial(weights, m, replacement=False, generator=generator)
    return torch.multinomial(weights.expand(rows, n_items), m, replacement=False, generator=generator)


def vector_slots(n_items: int, *index_tensors: torch.Tensor, size: int | None = None):
    """On the host: the distinct catalog indices a batch touches, (items [U], row [n_items]) with
    row[items[j]] = j (-1 elsewhere). `size` pads items to a fixed U (repeating the first index;
    the padded rows are computed and never read) so that every step has the same shapes."""
    flat = torch.cat([t.flatten().cpu() for t in index_tensors])
    needed = torch.unique(flat[flat >= 0])
    row = torch.full((n_items,), -1, dtype=torch.long)
    row[needed] = torch.arange(len(needed))
    if size is not None:
        if len(needed) > size:
            raise ValueError(f"the batch touches {len(needed)} items, more than its fixed item slots ({size})")
        fill = needed[:1] if len(needed) else torch.zeros(1, dtype=torch.long)
        needed = torch.cat([needed, fill.expand(size - len(needed))])
    return needed, row


def plan_step(batch: Batch, n_items: int, t: TrainConfig, generator: torch.Generator,
              candidates: bool | None = None, slots: int | None = None,
              neighbours: torch.Tensor | None = None) -> StepInputs:
    """The host half of a step (§3.6): negatives that are none of the batch's positives, shared
    across the batch and the two tasks as configured, and the positive's random place.

    recall: a pool of `recall_pool` negatives (M_train by default), shared by every row when
    `share_negatives_batch`. rerank: M_train candidates per row; with a larger pool each row takes
    its own window of it, so the rerank negatives stay a subset of the recall ones (shared across
    tasks) while the batch as a whole sees more distinct negatives (issue 11: they scale with B).
    neighbours [B, K]: each row's recall neighbours (`pecrs.hard_negatives`, NO_ITEM rows for
    rows without a target); with `train.hard_negatives` h > 0 each row's first h rerank negatives
    are drawn from them, and (tasks shared) its recall negatives are those h and pool - h random
    ones. The random ones avoid the batch's hard ones, so no row sees an item twice (unless the
    catalog cannot spare them: then the widths are kept, not that); rows without a target (whose
    losses count 0) get catalog index 0 in those places. With h = 0 the draws are
    those of a run without hard negatives.
    candidates=None lays candidates out only if some row has a target (less work on a CPU);
    True always (static shapes, several processes). `batch` is on the host.
    """
    B = len(batch.target)
    positives = batch.target[batch.target >= 0]
    if candidates is None:
        candidates = len(positives) > 0
    pool, m = recall_pool_size(t), t.m_train
    if pool < m:
        raise ValueError(f"train.recall_pool ({pool}) must be at least train.m_train ({m})")
    hard = draw_hard(neighbours, t.hard_negatives, generator) if neighbours is not None and t.hard_negatives \
        else torch.zeros(B, 0, dtype=torch.long)
    h, shared = hard.shape[1], t.share_negatives_tasks
    avoid = torch.cat([positives, hard[hard >= 0]]) if h else positives
    if h and n_items - len(avoid.unique()) < pool - (h if shared else 0):
        # Too few items left to avoid the hard ones too: a row may then see one twice, but every
        # step keeps its shapes (a narrower pool would recompile a compiled step).
        avoid = positives
    hard = hard.clamp_min(0)
    rows = None if t.share_negatives_batch else B
    drawn = sample_negatives(n_items, avoid, pool - (h if shared else 0), rows, generator)
    if rows is None:
        drawn = drawn.expand(B, -1)
    recall = torch.cat([hard, drawn], 1) if shared and h else drawn
    pool = recall.shape[1]           # a catalog smaller than the pool gives fewer
    m = min(m, pool)
    if not shared:
        rerank = sample_negatives(n_items, avoid, max(m - h, 0), rows, generator)
        rerank = torch.cat([hard, rerank.expand(B, -1) if rows is None else rerank], 1)
    elif pool == m:
        # A copy, not `recall` itself: a compiled step guards on which inputs alias, so one tensor
        # passed as both would recompile the step whenever the aliasing changed.
        rerank = recall.clone()
    else:                            # row i: its own window of the random pool, wrapping around
        window = (torch.arange(B).unsqueeze(1) * (m - h) + torch.arange(m - h)) % (pool - h)
        rerank = torch.cat([hard, drawn.gather(1, window)], 1)
    place = torch.randint(0, m + 1, (B,), generator=generator)
    if not candidates:
        recall, rerank = recall[:, :0], rerank[:, :0]
    items, row = vector_slots(n_items, batch.context_items, batch.gen_items, batch.target, recall, rerank, size=slots)
    return StepInputs(batch, recall.contiguous(), rerank.contiguous(), place, items, row)


def step_losses(model, store: ItemStore, inputs: StepInputs, t: TrainConfig) -> dict[str, torch.Tensor]:
    """The device half: the step's item token states, then PECRS.forward (item vectors and the
    three losses in one pass; `model` may be a DDP- or compile-wrapped PECRS)."""
    core = _core(model)
    states, mask = store.token_states(core, inputs.vector_items)
    return model(inputs.batch, states, mask, inputs.vector_row, inputs.recall_negatives,
                 inputs.rerank_negatives, inputs.place, normalize=t.loss_normalization,
                 rerank_temperature=t.rerank_temperature, label_smoothing=t.label_smoothing)


def _core(model):
    """The PECRS module under DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    for name in ("module", "_orig_mod"):
        while hasattr(model, name) and isinstance(getattr(model, name), torch.nn.Module):
            model = getattr(model, name)
    return model


# ---- how the step runs: eager, compiled, or compiled with CUDA graphs ------------------------

STEP_MODES = ("auto", "eager", "compile", "cudagraphs")


def resolve_step_mode(mode: str, device: torch.device, static: bool) -> str:
    """"auto": CUDA graphs on a GPU with static shapes (a small backbone's step is bound by
    kernel launches, docs/results.md), eager elsewhere (compiling a CPU step costs more than it saves
    in short runs)."""
    if mode not in STEP_MODES:
        raise ValueError(f"train.step_mode must be one of {STEP_MODES}, not {mode!r}")
    if mode == "auto":
        return "cudagraphs" if device.type == "cuda" and static else "eager"
    return mode


class StepRunner:
    """Calls the model's forward eagerly or through torch.compile; a compiled step that fails
    (compilation, graph capture, or its backward) falls back to eager once, with the reason logged.

        runner = StepRunner(model, "cudagraphs")
        losses = runner(store, inputs, train_config)
    """

    def __init__(self, model, mode: str = "eager", backend: str = "inductor"):
        self.model = model
        self.mode = mode
        self.fallback_reason: str | None = None
        if mode == "eager":
            self.forward = model
        else:
            options = {"mode": "reduce-overhead"} if mode == "cudagraphs" else {}
            try:
                self.forward = torch.compile(model, backend=backend, dynamic=False, **options)
            except Exception as error:  # e.g. no compiler backend on this platform
                self.forward = model
                self._fell_back(error)

    @property
    def compiled(self) -> bool:
        return self.forward is not self.model

    @staticmethod
    def graphs() -> int:
        """Graphs torch.compile has compiled in this process (dynamo's own count): 1 for a step
        with static shapes; more means graph breaks or recompilations (each a full compile, ~100 s on
        a GPU)."""
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])

    def __call__(self, store: ItemStore, inputs: StepInputs, t: TrainConfig) -> dict[str, torch.Tensor]:
        if self.mode == "cudagraphs" and self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # this step's outputs may overwrite the last's
        return step_losses(self.forward, store, inputs, t)

    def fall_back(self, error: BaseException) -> None:
        """Switch to eager for the rest of the run."""
        self.forward = self.model
        self._fell_back(error)

    def _fell_back(self, error: BaseException) -> None:
        self.fallback_reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        log.warning("step_mode %s failed, running eager instead: %s", self.mode, self.fallback_reason)
        self.mode = "eager"


def saved_grads(params) -> list[torch.Tensor | None]:
    """Copies of the parameters' gradients, to put back with `restore_grads`."""
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def restore_grads(params, saved: list[torch.Tensor | None] | None) -> None:
    """The gradients as `saved_grads` copied them (None: no gradients), undoing whatever a failed
    forward or backward added since."""
    for i, p in enumerate(params):
        p.grad = None if saved is None or saved[i] is None else saved[i].clone()


def scaled_lr(t: TrainConfig, effective_batch: int) -> float:
    """The learning rate for `effective_batch` samples per update. With `lr_reference_batch` set,
    `lr` is the rate tuned at that batch size and is scaled by sqrt(effective / reference), the
    square-root rule for Adam-type optimisers (the update's noise scale stays put as the batch
    grows); without it `lr` is used as is (the paper's configs)."""
    if not t.lr_reference_batch:
        return t.lr
    return t.lr * math.sqrt(effective_batch / t.lr_reference_batch)


def cast_frozen(model, dtype: torch.dtype) -> int:
    """Store the frozen floating-point weights in `dtype` (in place); trainable parameters
    (LoRA, special-token rows, heads) and the optimiser stay float32. Returns how many tensors
    were cast. With bfloat16 autocast this removes the per-op weight casts of a float32 model;
    the model must then run under autocast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    # peft casts each adapter's input to the adapter's float32 dtype, which autocast then casts
    # back: two casts per adapted layer and pass. Under autocast (required with low-precision
    # frozen weights) the matmul dtypes are autocast's business, so peft's casts are dropped.
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    return n
