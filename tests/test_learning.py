"""A few hundred steps on a small synthetic catalog lift recall far above chance."""
import math
import os

import numpy as np
import pytest
import torch

from pecrs.catalog import ItemStore
from pecrs.config import RunConfig
from pecrs.evaluate import rank_samples, rank_samples_at
from pecrs.pretrained import build_model
from pecrs.samples import make_samples
from pecrs.testing import ITEMS, dialogues
from pecrs.tokens import DialogueEncoder, collate
from pecrs.train import total_loss, training_step_losses


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-llama"])
def test_training_lifts_recall_far_above_chance(backbone, seed=int(os.environ.get("PECRS_TEST_SEED", 0))):
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens, cfg.train.m_train = backbone, 16, 8
    # The authors' loss weights (issue 11): with the paper's (0.15, 0.85, 1.0) generation supplies
    # most of the gradient and, on this toy task, whether recall and the re-ranker learn within a
    # few hundred steps depends on the random stream; with these they learned for every seed tried.
    cfg.train.alpha, cfg.train.beta, cfg.train.gamma = 0.8, 1.0, 0.15
    model = build_model(cfg, seed=0)
    store = ItemStore(ITEMS, model.tokenizer, cfg.model.item_fields, 16).cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    train = encoder.encode_all(make_samples(dialogues(0, 400)))
    test = encoder.encode_all(make_samples(dialogues(1, 64)))
    targets = np.array([e.target for e in test])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    rerank_losses = []
    # 200 steps at lr 1e-3 for recall, then 400 at 3e-3: the re-ranker learns more slowly (it must
    # learn through the LM's attention).
    for step in range(1, 601):
        model.train()
        idx = torch.randint(len(train), (8,), generator=g)
        batch = collate([train[i] for i in idx], model.tokenizer.pad_token_id, model.rec_end_id)
        losses = training_step_losses(model, store, batch, cfg, g)
        loss = total_loss(losses, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rerank_losses.append(losses["rerank"].item())
        if step == 200:
            model.eval()
            ranked = rank_samples(model, test, store.all_vectors(model), 16, 16, rerank=False)
            chance = 1 / len(ITEMS)
            assert (ranked[:, 0] == targets).mean() >= 4 * chance
            for group in optimizer.param_groups:
                group["lr"] = 3e-3
    print(backbone, np.mean(rerank_losses[:50]), np.mean(rerank_losses[-50:]))
    assert np.mean(rerank_losses[-50:]) < np.mean(rerank_losses[:50]) - 0.2
    assert np.mean(rerank_losses[-50:]) < math.log(1 + cfg.train.m_train)


@pytest.mark.parametrize("backbone", ["tiny-gpt2", "tiny-llama"])
def test_one_rerank_pass_serves_every_m_inference(backbone):
    """rank_samples_at (Figure 3's grid from one pass) equals separate passes per M_inference."""
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = backbone, 16
    model = build_model(cfg, seed=0).eval()
    store = ItemStore(ITEMS, model.tokenizer, cfg.model.item_fields, 16).cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    test = encoder.encode_all(make_samples(dialogues(1, 12)))
    vectors = store.all_vectors(model)
    grid = [3, 8, 16, 40]                       # 40 > the 16-item catalog: clamped like a single pass
    for rerank in (True, False):
        together = rank_samples_at(model, test, vectors, grid, 5, rerank=rerank, keep=6)
        for m in grid:
            alone = rank_samples(model, test, vectors, m, 5, rerank=rerank, keep=6)
            assert together[m].shape == alone.shape == (len(test), min(m, 6))
            np.testing.assert_array_equal(together[m], alone)
    together = rank_samples_at(model, test, vectors, grid, 5, keep=6)
    with pytest.raises(ValueError, match="one M_inference"):
        rank_samples_at(model, test, vectors, grid, 5, index=object())
    # ...and the model's own sorted ranking, one batch
    batch = collate(test, model.tokenizer.pad_token_id, model.rec_end_id)
    with torch.no_grad():
        top, _ = model.recommend(batch.context_ids, batch.context_items, batch.context_len, vectors, m_inference=8)
    np.testing.assert_array_equal(together[8], top[:, :6].numpy())
    # the grid differs across M (else the comparison above proves nothing)
    assert not np.array_equal(together[3][:, :3], together[16][:, :3])


def test_samples_sharing_a_context_are_ranked_once(monkeypatch):
    """The k samples of a turn naming k items share their context: ranked once, the ranking copied
    to each (equal to ranking each alone); samples that differ in their exclusions stay apart."""
    cfg = RunConfig()
    cfg.model.backbone, cfg.model.item_max_tokens = "tiny-llama", 16
    model = build_model(cfg, seed=0).eval()
    store = ItemStore(ITEMS, model.tokenizer, cfg.model.item_fields, 16).cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    test = encoder.encode_all(make_samples(dialogues(1, 6)))
    vectors = store.all_vectors(model)
    repeated = [test[0], test[1], test[0], test[2], test[1], test[0]]
    rows_ranked = []
    recommend = model.recommend
    monkeypatch.setattr(model, "recommend", lambda ids, *a, **kw: rows_ranked.append(len(ids)) or recommend(ids, *a, **kw))
    ranked = rank_samples(model, repeated, vectors, 8, 4, keep=6)
    assert sum(rows_ranked) == 3
    alone = rank_samples(model, test[:3], vectors, 8, 4, keep=6)
    np.testing.assert_array_equal(ranked, alone[[0, 1, 0, 2, 1, 0]])
    rows_ranked.clear()
    exclude = [[], [], [int(alone[0, 0])], [], [], []]           # the third copy of test[0] excludes its top item
    ranked = rank_samples(model, repeated, vectors, 8, 4, keep=6, exclude=exclude)
    assert sum(rows_ranked) == 4 and ranked[2, 0] != ranked[0, 0] and (ranked[5] == ranked[0]).all()
