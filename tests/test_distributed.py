"""The training recipe on several processes (issue 11: "users who outgrow one GPU run the same
recipe on several through accelerate/torchrun"): `torchrun --nproc_per_node 2` on CPUs (gloo)
runs the real `pecrs.train.train` on a tiny config and is compared with one process running the
same steps over the union batch (`batch_size` doubled).

What is checked, per step of a whole (short) epoch:
- each process gets its own rows of the step's global batch (rows rank, rank + 2, ...), the two
  shares are disjoint and cover the batch, and the global batch is the one the single process
  runs at that step;
- the gradients the optimiser sees, after DDP's all-reduce, equal the single process's gradients
  over the union batch. With `loss_normalization="targets"`, rows without a target, and a last
  batch of one row (one process left without rows) this holds only if every process weighs its
  losses by its share of the rows/targets (`pecrs.step.shard`). `gradient_mismatch` is 6e-5
  here (bound 1e-3); with the bugs the driver can plant (`PLANT`) it is 1.0 for a sum instead
  of a mean ("sum"), 0.62 for plain per-process means ("unweighted": the split before `shard`, which
  also crashed the process left without rows)
  and 2.8 for a process's own gradient without the all-reduce ("local", which also breaks the
  equality of the processes' gradients);
- the weights after the first step equal the single process's. AdamW's first update is
  lr * g / (|g| + eps), i.e. nearly lr * sign(g), so weights are compared where the gradient is
  above rounding noise (a gradient that is exactly 0 in exact arithmetic, e.g. the bias of the
  last rerank layer under a softmax, has a noise-sized value whose sign Adam turns into a full
  lr step). The weight check catches a wrong or partial gradient; the gradient check also
  catches a wrong scale, which AdamW's first step cannot show;
- the checkpoint rank 0 writes at the end loads (`load_pretrained`) and holds the weights that
  the processes trained, which match the single process's checkpoint.
"""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pecrs.config import RunConfig
from pecrs.testing import ITEMS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no gloo backend")
WORLD = 2
PER_PROCESS = 2

DRIVER = r'''
"""Runs pecrs.train.train and records, per step, the global batch, this process's rows and the
loss weights (pecrs.train.shard), and the gradients and weights the optimiser sees."""
import json, os, sys
import torch
import pecrs.train as train_module
from pecrs.config import RunConfig

config = RunConfig.from_dict(json.loads(open(sys.argv[1]).read()))
out = sys.argv[2]
rank = int(os.environ.get("RANK", 0))
plant = os.environ.get("PLANT", "")   # deliberate bugs, to show that the test catches them
record = {"plans": [], "shards": [], "steps": [], "names": None}

real_plan, real_shard = train_module.plan_step, train_module.shard

def plan_step(batch, *args, **kwargs):
    inputs = real_plan(batch, *args, **kwargs)
    record["plans"].append({"target": batch.target.clone(), "context": batch.context_ids.clone(),
                            "recall_negatives": inputs.recall_negatives.clone()})
    return inputs

def shard(inputs, rank, world, normalize="batch"):
    part, weights = real_shard(inputs, rank, world, normalize)
    if plant == "sum":         # every process's full losses: DDP's mean becomes a sum
        weights = {k: v * world for k, v in weights.items()}
    if plant == "unweighted":  # plain per-process means, the naive split
        weights = {k: 1.0 for k in weights}
    record["shards"].append({"rank": rank, "world": world, "weights": dict(weights),
                             "target": part.batch.target.clone(), "context": part.batch.context_ids.clone(),
                             "recall_negatives": part.recall_negatives.clone()})
    return part, weights

train_module.plan_step, train_module.shard = plan_step, shard

Real = torch.optim.AdamW

class Spy(Real):
    """Records what each update uses (gradients after the all-reduce) and produces."""
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
        result = super().step(closure)
        record["steps"].append({"grads": grads, "weights": [p.detach().clone() for p in params]})
        return result

torch.optim.AdamW = Spy
if plant == "local":   # no all-reduce: each process keeps its own rows' gradient
    from torch.nn.parallel import DistributedDataParallel as DDP
    real_forward = DDP.forward
    def forward(self, *args, **kwargs):
        self.require_backward_grad_sync = False
        return real_forward(self, *args, **kwargs)
    DDP.forward = forward
state = train_module.train(config, out, progress=False)
torch.save(record, os.path.join(out, f"record{rank}.pt"))
'''


def write_dataset(folder: Path, n_dialogues: int = 5) -> None:
    """Dialogues with a recommender turn without an item and one with an item: training
    batches mix rows with and without a target."""
    folder.mkdir()
    with open(folder / "items.jsonl", "w") as f:
        for it in ITEMS:
            f.write(json.dumps(asdict(it)) + "\n")
    words = [it.genres[0] for it in ITEMS]
    for split, n in (("train", n_dialogues), ("dev", 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for d in range(n):
                k = (3 * d + (split == "dev")) % len(words)
                turns = [{"role": "recommender", "text": "Hi! What do you feel like?", "items": []},
                         {"role": "seeker", "text": f"Something with a {words[k]} please", "items": []},
                         {"role": "recommender", "text": "Any other wishes?", "items": []},
                         {"role": "seeker", "text": "No, surprise me", "items": []},
                         {"role": "recommender", "text": "You will love [ITEM]", "items": [str(k)]}]
                f.write(json.dumps({"id": f"{split}{d}", "turns": turns}) + "\n")


def tiny_config(dataset: Path, batch_size: int) -> RunConfig:
    cfg = RunConfig()
    m, t = cfg.model, cfg.train
    m.backbone, m.item_max_tokens, m.context_max_tokens, m.response_max_tokens = "tiny-llama", 16, 64, 16
    m.lora_dropout = 0.0            # dropout masks would differ between the two layouts
    m.item_standardize = True       # fitted before the model is wrapped, identical in every process
    t.dataset, t.epochs, t.batch_size, t.lr = str(dataset), 1, batch_size, 1e-3
    t.warmup_epochs = 0             # a warm-up would make the first update's learning rate 0
    t.max_train_samples = 9         # batches of 4, 4 and 1 rows: the last leaves one process without rows
    t.loss_normalization = "targets"
    # Fixed shapes, as on GPUs (where several processes are used): candidates are laid out in every
    # step, also in one without a target. (Without them a single process skips the heads' update
    # in such a step, while several processes, which always lay them out, update with momentum.)
    t.static_shapes = True
    t.m_train, t.checkpoint_every = 6, 0
    cfg.inference.m_inference, cfg.inference.batch_size = 16, 8
    return cfg


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_pair(tmp_path: Path, plant: str = "") -> tuple[dict, list[dict], Path, Path]:
    """(single-process record, per-rank records, their run folders)."""
    data = tmp_path / "data"
    if not data.exists():
        write_dataset(data)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    configs = {}
    for name, batch in (("single", WORLD * PER_PROCESS), ("ddp", PER_PROCESS)):
        configs[name] = tmp_path / f"{name}.json"
        configs[name].write_text(json.dumps(tiny_config(data, batch).to_dict()))
    single_out, ddp_out = tmp_path / "single", tmp_path / f"ddp{plant}"
    env = _env()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    procs = [subprocess.Popen([sys.executable, str(driver), str(configs["single"]), str(single_out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             if not (single_out / "record0.pt").exists() else None,
             subprocess.Popen(torchrun + [str(driver), str(configs["ddp"]), str(ddp_out)],
                              env=dict(env, PLANT=plant), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)]
    for proc in procs:
        if proc is None:
            continue
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-4000:]
    single = torch.load(single_out / "record0.pt", weights_only=False)
    ranks = [torch.load(ddp_out / f"record{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks, single_out, ddp_out


def gradient_mismatch(single: dict, ranks: list[dict]) -> float:
    """Largest, over steps and parameters, of |g_ddp - g_single| / (|g_single| + 1e-3 * the
    step's largest gradient norm) (norms per parameter tensor; the second term keeps gradients
    that are 0 in exact arithmetic, seen as rounding noise, from counting)."""
    worst = 0.0
    for s, d in zip(single["steps"], ranks[0]["steps"]):
        scale = max(float(g.norm()) for g in s["grads"])
        for a, b in zip(s["grads"], d["grads"]):
            worst = max(worst, float((a - b).norm()) / (float(a.norm()) + 1e-3 * scale))
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_pair(tmp_path_factory.mktemp("distributed"))


def test_each_process_gets_its_own_rows_of_the_step(runs):
    single, ranks, _, _ = runs
    n_steps = len(single["plans"])
    assert n_steps == 3 and [len(p["target"]) for p in single["plans"]] == [4, 4, 1]
    for r, record in enumerate(ranks):
        assert len(record["plans"]) == len(record["shards"]) == n_steps
        assert all(s["rank"] == r and s["world"] == WORLD for s in record["shards"])
    for step in range(n_steps):
        plan = single["plans"][step]
        for record in ranks:  # every process plans the same global batch as the single process
            assert torch.equal(record["plans"][step]["target"], plan["target"])
            assert torch.equal(record["plans"][step]["context"], plan["context"])
            assert torch.equal(record["plans"][step]["recall_negatives"], plan["recall_negatives"])
        B = len(plan["target"])
        for r, record in enumerate(ranks):
            share = record["shards"][step]
            mine = list(range(r, B, WORLD))
            if mine:
                assert torch.equal(share["context"], plan["context"][mine])
                assert torch.equal(share["target"], plan["target"][mine])
                assert torch.equal(share["recall_negatives"], plan["recall_negatives"][mine])
                assert share["weights"]["gen"] > 0
            else:  # no rows left for this process: a stand-in row that weighs nothing
                assert len(share["target"]) == 1 and all(w == 0 for w in share["weights"].values())
    # the batches mix rows with and without a target, and some step splits its targets unevenly
    targets = [[int((record["shards"][step]["target"] >= 0).sum()) for record in ranks] for step in range(n_steps)]
    assert any(t[0] != t[1] for t in targets[:2]), targets
    assert any(bool((p["target"] < 0).any()) for p in single["plans"])


def test_gradients_are_averaged_like_one_process_over_the_union_batch(runs):
    single, ranks, _, _ = runs
    assert len(single["steps"]) == len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 3
    for step in range(3):
        g0, g1, gs = ranks[0]["steps"][step]["grads"], ranks[1]["steps"][step]["grads"], single["steps"][step]["grads"]
        assert all(g is not None for g in g0 + g1 + gs), "every trainable parameter gets a gradient"
        assert all(torch.equal(a, b) for a, b in zip(g0, g1)), "the processes' gradients are all-reduced"
    assert gradient_mismatch(single, ranks) < 1e-3
    # weights after the first update, where the gradient is above rounding noise
    first_single, first_ddp = single["steps"][0], ranks[0]["steps"][0]
    compared = 0
    for g, a, b in zip(first_single["grads"], first_single["weights"], first_ddp["weights"]):
        signal = g.abs() > 1e-6
        compared += int(signal.sum())
        assert torch.allclose(a[signal], b[signal], rtol=0, atol=1e-6)
        assert float((a - b).abs().max()) <= 2e-3 + 1e-6  # elsewhere at most two lr steps apart (signs)
    assert compared > 1000


def test_checkpoint_written_by_rank_0_loads(runs):
    from safetensors.torch import load_file

    from pecrs.pretrained import load_pretrained

    single, ranks, single_out, ddp_out = runs
    model, config = load_pretrained(ddp_out / "last")
    assert config.train.batch_size == PER_PROCESS
    assert model.item_encoder.standardize and float(model.item_encoder.pooled_mean.abs().sum()) > 0
    trained = [p for p in model.parameters() if p.requires_grad]
    final = ranks[0]["steps"][-1]["weights"]
    assert len(trained) == len(final)
    for p, w in zip(trained, final):
        assert torch.equal(p.detach(), w)
    state = json.loads((ddp_out / "last" / "pecrs_config.json").read_text())
    assert state["trainer"]["global_step"] == 3
    assert (ddp_out / "best" / "pecrs_config.json").is_file()
    # and it matches the single process's checkpoint (up to the noise discussed above)
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(single_out / "last" / name), load_file(ddp_out / "last" / name)
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 3e-3
