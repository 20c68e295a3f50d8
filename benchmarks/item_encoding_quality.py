"""Cached frozen-base vs adapted item encoding: quality and speed on the synthetic task of
pecrs.testing (ITEMS, dialogues: what tests/test_learning.py trains on; tiny random backbones,
300 steps, CPU).
    python benchmarks/item_encoding_quality.py
"""
import sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, as in ann.py and _common.py
from pecrs.testing import ITEMS, dialogues
from pecrs.catalog import ItemStore
from pecrs.config import RunConfig
from pecrs.evaluate import rank_samples
from pecrs.pretrained import build_model
from pecrs.samples import make_samples
from pecrs.tokens import DialogueEncoder, collate
from pecrs.train import total_loss, training_step_losses
for bb in ["tiny-llama", "tiny-gpt2"]:
  for mode in ["cached", "adapted"]:
    cfg = RunConfig(); cfg.model.backbone, cfg.model.item_max_tokens, cfg.train.m_train = bb, 16, 8
    model = build_model(cfg, seed=0)
    store = ItemStore(ITEMS, model.tokenizer, cfg.model.item_fields, 16, encoding=mode)
    if mode == "cached": store.cache_base_states(model)
    enc = DialogueEncoder(model.tokenizer, store.index, 64, 16)
    train = enc.encode_all(make_samples(dialogues(0, 400))); test = enc.encode_all(make_samples(dialogues(1, 64)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0); t = time.perf_counter()
    for _ in range(300):
        idx = torch.randint(len(train), (8,), generator=g)
        b = collate([train[i] for i in idx], model.tokenizer.pad_token_id, model.rec_end_id)
        l = training_step_losses(model, store, b, cfg, g)
        loss = total_loss(l, cfg); opt.zero_grad(); loss.backward(); opt.step()
    secs = time.perf_counter() - t
    model.eval(); tg = np.array([e.target for e in test])
    r = rank_samples(model, test, store.all_vectors(model), 16, 16)
    rr = rank_samples(model, test, store.all_vectors(model), 16, 16, rerank=False)
    print(f"{bb} {mode}: R@1 recall+rerank {(r[:,0]==tg).mean():.3f} recall-only {(rr[:,0]==tg).mean():.3f} R@5 {np.mean([t in row[:5] for t,row in zip(tg,r)]):.3f} train {secs:.1f}s/300 steps")
