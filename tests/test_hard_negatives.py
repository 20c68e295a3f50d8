"""Hard negatives (pecrs.hard_negatives): recall's neighbours of each training sample, drawn into
the step's negatives on the host, kept whole across a resume."""
import json

import pytest
import torch

import pecrs.train
from pecrs.config import ConfigError, RunConfig
from pecrs.data import Dialogue, Item, Turn
from pecrs.evaluate import rank_samples
from pecrs.hard_negatives import answers_of_turn, draw_hard, recall_neighbours
from pecrs.samples import make_samples
from pecrs.step import item_slots, plan_step, step_losses
from pecrs.testing import ITEMS, step_setup, tiny_config, varied_dialogues, write_dataset
from pecrs.tokens import Batch, collate


def _batch(target):
    B = len(target)
    z = torch.zeros(B, 2, dtype=torch.long)
    return Batch(z, z - 1, torch.full((B,), 2), z, z - 1, torch.full((B,), 2), z - 100, torch.tensor(target))


TARGET = [3, -1, 7, 7, 11]
# Each row's recall neighbours: never its own target; row 1 has no target.
NEIGHBOURS = torch.tensor([[20, 21, 22, 23, 24, 25], [-1] * 6, [30, 31, 32, 3, 33, 34],
                           [30, 31, 32, 11, 35, 36], [5, 6, 8, 9, 12, 13]], dtype=torch.int32)


def test_plan_step_draws_each_rows_hard_negatives_from_its_neighbours_and_never_twice():
    t = RunConfig().train
    t.m_train, t.recall_pool, t.hard_negatives = 4, 10, 2
    batch = _batch(TARGET)
    seen = set()
    for seed in range(30):
        s = plan_step(batch, 40, t, torch.Generator().manual_seed(seed), neighbours=NEIGHBOURS)
        assert s.recall_negatives.shape == (5, 10) and s.rerank_negatives.shape == (5, 4)  # as without
        hard_of_batch = set(s.rerank_negatives[[0, 2, 3, 4], :2].flatten().tolist())
        for i, target in enumerate(TARGET):
            recall, rerank = s.recall_negatives[i].tolist(), s.rerank_negatives[i].tolist()
            if target < 0:
                assert rerank[:2] == [0, 0]          # no target: placeholders, its losses count 0
                continue
            assert set(rerank[:2]) <= set(NEIGHBOURS[i].tolist())
            assert len(set(recall)) == 10 and len(set(rerank)) == 4 and set(rerank) <= set(recall)
            assert target not in recall
            # the random part: shared by the rows, none of the positives nor of the batch's hard ones
            assert not set(recall[2:]) & ({3, 7, 11} | hard_of_batch)
            assert s.recall_negatives[i, 2:].tolist() == s.recall_negatives[0, 2:].tolist()
        seen |= set(s.rerank_negatives[0, :2].tolist())
        used = torch.cat([s.recall_negatives.flatten(), s.rerank_negatives.flatten()])
        assert torch.equal(s.vector_items[s.vector_row[used]], used)
    assert seen == set(NEIGHBOURS[0].tolist())       # a fresh draw each step covers the neighbours
    # hard_negatives 0: the plan is the one without neighbours, draw for draw
    t.hard_negatives = 0
    a = plan_step(batch, 40, t, torch.Generator().manual_seed(3), neighbours=NEIGHBOURS)
    b = plan_step(batch, 40, t, torch.Generator().manual_seed(3))
    for name in ("recall_negatives", "rerank_negatives", "place", "vector_items", "vector_row"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_hard_negatives_under_the_sharing_ablations_and_when_all_negatives_are_hard():
    t = RunConfig().train
    t.m_train, t.recall_pool, t.hard_negatives = 4, 10, 2
    batch = _batch(TARGET)
    t.share_negatives_tasks = False                  # hard ones are rerank negatives only
    s = plan_step(batch, 40, t, torch.Generator().manual_seed(0), neighbours=NEIGHBOURS)
    for i in (0, 2, 3, 4):
        rerank, recall = s.rerank_negatives[i].tolist(), set(s.recall_negatives[i].tolist())
        assert set(rerank[:2]) <= set(NEIGHBOURS[i].tolist()) and len(set(rerank)) == 4
        assert not recall & set(rerank[:2]) and len(recall) == 10
    t.share_negatives_tasks, t.share_negatives_batch = True, False   # each row its own random pool
    s = plan_step(batch, 40, t, torch.Generator().manual_seed(0), neighbours=NEIGHBOURS)
    for i in (0, 2, 3, 4):
        assert len(set(s.recall_negatives[i].tolist())) == 10
        assert set(s.rerank_negatives[i, :2].tolist()) <= set(NEIGHBOURS[i].tolist())
    t.share_negatives_batch, t.recall_pool, t.m_train = True, None, 2   # every negative a hard one
    s = plan_step(batch, 40, t, torch.Generator().manual_seed(0), neighbours=NEIGHBOURS)
    assert torch.equal(s.recall_negatives, s.rerank_negatives)
    assert set(s.rerank_negatives[0].tolist()) <= set(NEIGHBOURS[0].tolist())


def test_a_catalog_too_small_to_avoid_the_hard_ones_keeps_the_shapes():
    """16 items, 3 positives and up to 8 hard ones: the random part cannot avoid them all, so it
    avoids the positives only (a row may see an item twice), and the step keeps its widths."""
    t = RunConfig().train
    t.m_train, t.recall_pool, t.hard_negatives = 4, 10, 2
    small = torch.tensor([[4, 5, 6, 8], [-1] * 4, [1, 2, 0, 9], [10, 12, 13, 14], [5, 6, 8, 9]], dtype=torch.int32)
    for seed in range(10):
        s = plan_step(_batch([3, -1, 7, 7, 11]), 16, t, torch.Generator().manual_seed(seed), neighbours=small)
        assert s.recall_negatives.shape == (5, 10) and s.rerank_negatives.shape == (5, 4)
        assert not set(s.recall_negatives[:, 2:].flatten().tolist()) & {3, 7, 11}


def test_draw_hard_is_uniform_without_replacement_and_keeps_rows_without_target():
    g = torch.Generator().manual_seed(0)
    drawn = draw_hard(NEIGHBOURS, 3, g)
    assert drawn.shape == (5, 3) and drawn.dtype == torch.long
    assert (drawn[1] == -1).all()
    assert all(len(set(row)) == 3 for row in drawn[[0, 2, 3, 4]].tolist())
    assert draw_hard(NEIGHBOURS, 9, g).shape == (5, 6)   # at most the K there are
    assert draw_hard(NEIGHBOURS[:, :0], 2, g).shape == (5, 0)


def test_a_turns_answers_and_their_twins_are_never_negatives():
    items = [Item("a", "Emma", 2020), Item("b", "Emma.", 2020), Item("c", "Heat", 1995), Item("d", "Up", 2009),
             Item("e", "Heat", 1986)]
    turn = Turn("recommender", "[ITEM] or [ITEM]", ("a", "c"))
    samples = make_samples([Dialogue("d0", (Turn("seeker", "hi"), turn, Turn("seeker", "thanks"),
                                            Turn("recommender", "Bye")))])
    answers = answers_of_turn(samples, items)
    assert [s.target for s in samples] == ["a", "c", None]
    # both samples of the two-item turn leave out both items, and "Emma." (Emma's twin); the 1986
    # Heat is another film
    assert answers == [[0, 1, 2], [0, 1, 2], []]
    # a sibling sample dropped by a filter (train.fresh_targets_only) is still an answer of the turn
    assert answers_of_turn(samples[1:], items) == [[0, 1, 2], []]


def test_recall_neighbours_are_recalls_top_without_the_answers():
    cfg, model, store, encoder, _ = step_setup("tiny-llama")
    dialogues = list(varied_dialogues(6))
    # a turn that names two items: each of its samples must not take the other as a negative
    dialogues[0] = Dialogue("two", (*dialogues[0].turns[:-1], Turn("recommender", "[ITEM] or [ITEM]", ("0", "5"))))
    samples = make_samples(dialogues)
    encoded = encoder.encode_all(samples)
    model.train()
    table = recall_neighbours(model, store, samples, encoded, 5, batch_size=4)
    assert model.training                          # its mode is put back
    assert table.shape == (len(samples), 5) and table.dtype == torch.int32
    model.eval()
    full = rank_samples(model, encoded, store.all_vectors(model), len(ITEMS), 4, rerank=False, keep=len(ITEMS))
    answers = answers_of_turn(samples, ITEMS)
    for i, s in enumerate(samples):
        if s.target is None:
            assert (table[i] == -1).all()
        else:
            assert table[i].tolist() == [x for x in full[i].tolist() if x not in answers[i]][:5]
    two = [i for i, s in enumerate(samples) if s.dialogue_id == "two" and s.target is not None]
    assert len(two) == 2 and all(not {0, 5} & set(table[i].tolist()) for i in two)
    # deeper than the catalog minus a row's answers: every row stays whole
    assert recall_neighbours(model, store, samples, encoded, 100).shape[1] == len(ITEMS) - 2


def test_a_step_with_hard_negatives_fits_the_static_item_slots():
    cfg, model, store, encoder, encoded = step_setup("tiny-llama", hard_negatives=3, hard_negative_depth=6)
    neighbours = torch.stack([torch.randperm(len(ITEMS))[:6] for _ in encoded]).to(torch.int32)
    slots = item_slots(encoded, 4, cfg.train)
    assert item_slots(encoded, 4, cfg.train, n_items=len(ITEMS)) == min(slots, len(ITEMS))
    s = plan_step(collate(encoded[:4], model.tokenizer.pad_token_id, model.rec_end_id), len(store), cfg.train,
                  torch.Generator().manual_seed(0), candidates=True, slots=slots, neighbours=neighbours[:4])
    assert len(s.vector_items) == slots
    losses = step_losses(model, store, s, cfg.train)
    assert all(torch.isfinite(losses[k]) for k in ("recall", "rerank", "gen"))


def test_hard_negative_settings_are_checked():
    cfg = RunConfig()
    cfg.train.hard_negatives = cfg.train.m_train + 1
    with pytest.raises(ConfigError, match=r"train.hard_negatives: expected at most train.m_train"):
        cfg.validate()
    cfg.train.hard_negatives, cfg.train.hard_negative_depth = 20, 10
    with pytest.raises(ConfigError, match=r"train.hard_negatives: expected at most train.hard_negative_depth"):
        cfg.validate()
    with pytest.raises(ConfigError, match="train.hard_negatives"):
        RunConfig.from_dict({"train": {"hard_negatives": -1}})
    with pytest.raises(ConfigError, match=r"train.hard_negatives_from_epoch: expected at most train.epochs \(1\)"):
        RunConfig.from_dict({"train": {"hard_negatives": 2, "epochs": 1}})
    assert RunConfig.from_dict({"train": {"hard_negatives": 2, "epochs": 1, "hard_negatives_from_epoch": 1}})


def test_training_with_hard_negatives_resumes_exactly_with_its_epochs_table(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_dataset(data)
    cfg = tiny_config(data)   # 2 epochs of 3 batches
    cfg.train.hard_negatives, cfg.train.hard_negative_depth = 2, 5
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return recall_neighbours(*args, **kwargs)
    monkeypatch.setattr(pecrs.train, "recall_neighbours", counted)
    pecrs.train.train(cfg, tmp_path / "straight", progress=False)
    assert len(calls) == 1                             # epoch 2 only (hard_negatives_from_epoch 2)
    state = pecrs.train.train(cfg, tmp_path / "resumed", progress=False, stop_after_steps=4)  # mid-epoch 2
    assert state["epoch"] == 1 and state["batch"] == 1 and len(calls) == 2
    saved = torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=True)["neighbours"]
    assert saved.shape[1] == 5
    pecrs.train.train(cfg, tmp_path / "resumed", progress=False)
    assert len(calls) == 2                             # epoch 2's table came back from last/
    cfg.train.hard_negatives_from_epoch = 1
    pecrs.train.train(cfg, tmp_path / "from_the_start", progress=False)
    assert len(calls) == 4                             # every epoch
    cfg.train.hard_negatives = 0
    pecrs.train.train(cfg, tmp_path / "uniform", progress=False)
    assert len(calls) == 4
    from safetensors.torch import load_file
    name = "heads.safetensors"
    a, b, c = (load_file(tmp_path / run / "last" / name) for run in ("straight", "resumed", "uniform"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)   # the hard ones changed the training
    epochs = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert ["hard_negatives_s" in e for e in epochs] == [False, True]   # the pass's time, when it ran
    assert epochs[1]["hard_negatives_s"] >= 0
    assert "hard_negatives_s" not in (tmp_path / "uniform" / "metrics.jsonl").read_text()
    # the model card says how the negatives were drawn
    from pecrs.export import model_card
    from pecrs.pretrained import read_meta
    card = model_card("hard", read_meta(tmp_path / "straight" / "last"), [], None, tmp_path / "straight" / "last")
    assert "2 of the M_train negatives drawn from recall's top 5 (from epoch 2)" in card
    assert "recall top" not in model_card("uniform", read_meta(tmp_path / "uniform" / "last"), [], None,
                                          tmp_path / "uniform" / "last")


def test_a_compiled_step_compiles_once_across_uniform_and_hard_epochs(tmp_path):
    """Epoch 1 draws uniformly, epoch 2 from recall's neighbours: the step's inputs keep their
    shapes, dtypes and aliasing, so a compiled step is not recompiled (on a GPU, ~100 s each)."""
    from torch._dynamo.utils import counters

    write_dataset(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data")   # 2 epochs
    t = cfg.train
    t.hard_negatives, t.hard_negative_depth, t.hard_negatives_from_epoch = 2, 5, 2
    t.static_shapes, t.step_mode, t.compile_backend = True, "compile", "eager"   # dynamo's guards, no codegen
    torch._dynamo.reset()
    counters.clear()
    pecrs.train.train(cfg, tmp_path / "run", progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "hard_negatives_s" in epochs[1] and not any(e.get("step_mode_fallback") for e in epochs)
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["total"] == 1
    assert [e["compiled_graphs"] for e in epochs] == [1, 1]          # what a GPU run's log shows
    assert len(epochs[0]["first_steps_s"]) == 3 and "first_steps_s" not in epochs[1]


def test_plan_step_never_passes_one_tensor_as_both_negatives():
    cfg = RunConfig()
    cfg.train.m_train = 4
    batch = _batch(TARGET)
    for hard in (0, 2):
        cfg.train.hard_negatives = hard
        s = plan_step(batch, 40, cfg.train, torch.Generator().manual_seed(0), candidates=True,
                      neighbours=NEIGHBOURS if hard else None)
        assert s.recall_negatives is not s.rerank_negatives and torch.equal(s.recall_negatives, s.rerank_negatives)
        assert s.recall_negatives.is_contiguous() and s.rerank_negatives.is_contiguous()
