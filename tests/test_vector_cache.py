"""Catalog vectors are derived data (pecrs.vector_cache): a cache that cannot be written, a saved
vectors file that is damaged or of another shape, or a foreign file in the cache costs an encoding
and a warning naming the file, never the load."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from pecrs.backbone.gguf import _convert_gguf
from pecrs.recommender import Recommender
from pecrs.testing import TURNS, make_tiny_run, toy_items
from pecrs.vector_cache import VECTORS_FILE, load_cached, save_vectors


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny run and its save_pretrained folder (catalog and vectors beside the checkpoint)."""
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("world"))
    rec = Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)
    return rec, rec.save_pretrained(tmp_path_factory.mktemp("saved") / "model")


def test_a_cache_that_cannot_be_written_is_a_warning(saved, tmp_path, caplog):
    rec, folder = saved
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    (folder / VECTORS_FILE).rename(tmp_path / "kept")       # so that the catalog is encoded
    try:
        with caplog.at_level(logging.WARNING, logger="pecrs.vector_cache"):
            loaded = Recommender.from_pretrained(folder, device="cpu", cache_dir=not_a_folder / "cache")
    finally:
        (tmp_path / "kept").rename(folder / VECTORS_FILE)
    assert "cannot write the catalog cache" in caplog.text and str(not_a_folder) in caplog.text
    assert not loaded.report.vectors_from_cache and torch.allclose(loaded.vectors, rec.vectors, atol=1e-5)
    assert loaded.report.cache_path is None and "cached at" not in loaded.report.summary()   # not written
    assert [r.item.id for r in loaded.recommend(TURNS, k=3)] == [r.item.id for r in rec.recommend(TURNS, k=3)]


@pytest.mark.parametrize("damage", ["truncated", "other width", "not finite"])
def test_damaged_saved_vectors_are_encoded_again(saved, tmp_path, caplog, damage):
    rec, folder = saved
    path = folder / VECTORS_FILE
    original = path.read_bytes()
    try:
        if damage == "truncated":
            path.write_bytes(original[:-40])
        elif damage == "other width":   # the hashes match, the width is not this model's
            save_vectors(torch.randn(len(rec), 7), rec.item_list, rec.config.model, path)
        else:
            save_vectors(rec.vectors.clone().index_fill_(0, torch.tensor([2]), float("nan")), rec.item_list,
                         rec.config.model, path)
        with caplog.at_level(logging.WARNING, logger="pecrs.vector_cache"):
            loaded = Recommender.from_pretrained(folder, device="cpu", cache_dir=False)
    finally:
        path.write_bytes(original)
    assert str(path) in caplog.text and "re-encoding" in caplog.text
    assert not loaded.report.vectors_from_cache and torch.allclose(loaded.vectors, rec.vectors, atol=1e-5)


def test_a_foreign_file_in_the_cache_is_ignored(tmp_path):
    for payload in ([1, 2], {"ids": ["a"], "vectors": "not a tensor"}):
        torch.save(payload, tmp_path / "x.pt")
        assert load_cached(tmp_path / "x.pt", ["a"]) is None


def test_an_unwritable_backbone_cache_is_named_before_converting(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match=rf"cannot write the converted backbone under {not_a_folder}.*PECRS_CACHE"):
        _convert_gguf(Path("never-read.gguf"), not_a_folder / "backbones" / "model")


def _edit_jsonl_first(path: Path, **fields) -> None:
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **fields})
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit", ["item text", "item_fields"])
def test_saved_vectors_of_other_item_texts_are_encoded_again(saved, tmp_path, caplog, edit):
    """Same ids, other texts: a catalog copy edited since it was saved (or the item settings of its
    config) once kept serving the old vectors, "loaded from cache"."""
    rec, folder = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    unchanged = Recommender.from_pretrained(copy, device="cpu", cache_dir=False)
    assert unchanged.report.vectors_from_cache and torch.equal(unchanged.vectors, rec.vectors.float())
    if edit == "item text":
        _edit_jsonl_first(copy / "items.jsonl", title="Another Film Entirely", plot="robots take over the moon")
    else:
        meta = json.loads((copy / "pecrs_config.json").read_text())
        model = meta["config"]["model"]
        model["item_fields"] = ["plot", "title"]
        (copy / "pecrs_config.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="pecrs.vector_cache"):
        loaded = Recommender.from_pretrained(copy, device="cpu", cache_dir=False)
    assert str(copy / VECTORS_FILE) in caplog.text and "re-encoding" in caplog.text
    assert not loaded.report.vectors_from_cache
    assert not torch.allclose(loaded.vectors[0], rec.vectors[0], atol=1e-4)   # item 0 as it reads now
    if edit == "item text":   # the other items' texts did not change, nor their vectors
        assert torch.allclose(loaded.vectors[1:], rec.vectors[1:], atol=1e-5)


def test_the_items_hash_covers_what_the_model_reads():
    """item_max_tokens cannot be edited in a saved checkpoint (the pooling weights have its length),
    so the hash is checked directly for it, with the other inputs of an item's vector."""
    from dataclasses import replace

    from pecrs.config import RunConfig
    from pecrs.vector_cache import items_sha256

    items, model = toy_items(3), RunConfig().model
    other = [replace(items[0], plot="another plot"), *items[1:]]
    renamed = [replace(items[0], id="x"), *items[1:]]
    variants = [items_sha256(items, model), items_sha256(other, model), items_sha256(renamed, model),
                items_sha256(items[::-1], model)]
    for setting, value in (("item_max_tokens", 7), ("item_fields", ["title"]), ("item_encoding", "adapted")):
        changed = RunConfig().model
        setattr(changed, setting, value)
        variants.append(items_sha256(items, changed))
    assert len(set(variants)) == len(variants)
    assert items_sha256(list(items), RunConfig().model) == variants[0]


def test_vectors_saved_with_the_ids_hash_only_still_load(saved, tmp_path, monkeypatch):
    """Files written before the items hash existed (the shipped model's) carry the hash of the ids
    alone: they load, checked against the ids as before, with nothing encoded."""
    from safetensors.torch import save_file

    from pecrs.catalog import ItemStore

    rec, folder = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    ids = list(rec.items)
    legacy = {"ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "count": str(len(ids))}
    save_file({"vectors": rec.vectors.half()}, copy / VECTORS_FILE, metadata=legacy)

    def no_encoding(*args, **kwargs):
        raise AssertionError("vectors saved with the ids hash only must load, not be encoded")

    monkeypatch.setattr(ItemStore, "all_vectors", no_encoding)
    loaded = Recommender.from_pretrained(copy, device="cpu", cache_dir=False)
    assert loaded.report.vectors_from_cache and torch.equal(loaded.vectors, rec.vectors.half().float())


def test_a_saved_models_own_catalog_given_as_catalog_uses_its_vectors(saved, tmp_path, monkeypatch):
    """`pecrs serve saved --catalog saved/items.jsonl` (or the same items in Python) serves the saved
    vectors, as evaluation does (one rule: prepare.saved_catalog_vectors); a copy with one title
    edited is encoded."""
    from pecrs.catalog import ItemStore
    from pecrs.loaders import load_items

    rec, folder = saved
    encoded = []
    all_vectors = ItemStore.all_vectors
    monkeypatch.setattr(ItemStore, "all_vectors", lambda self, *a, **k: encoded.append(1) or all_vectors(self, *a, **k))
    for catalog in (folder / "items.jsonl", list(load_items(folder / "items.jsonl").values())):
        again = Recommender.from_pretrained(folder, catalog=catalog, device="cpu", cache_dir=False)
        assert again.report.vectors_with_model
        assert [r.item.id for r in again.recommend(TURNS, k=3)] == [r.item.id for r in rec.recommend(TURNS, k=3)]
    assert encoded == []
    edited = tmp_path / "items.jsonl"
    lines = (folder / "items.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "title": row["title"] + " II"})
    edited.write_text("\n".join(lines) + "\n")
    other = Recommender.from_pretrained(folder, catalog=edited, device="cpu", cache_dir=False)
    assert encoded == [1] and not other.report.vectors_with_model


def test_the_cache_key_changes_with_the_checkpoint_weights_and_the_base(tmp_path):
    """A disk cache of catalog vectors is reused only by the same model: other adapter weights,
    other heads or another base under the same config are another key, the same bytes the same key."""
    from pecrs.config import RunConfig
    from pecrs.pretrained import ADAPTER_DIR, HEADS_FILE
    from pecrs.vector_cache import catalog_cache_key

    (tmp_path / ADAPTER_DIR).mkdir()
    adapter, heads = tmp_path / ADAPTER_DIR / "adapter_model.safetensors", tmp_path / HEADS_FILE
    items, model = toy_items(), RunConfig().model

    def key(lora: bytes, head: bytes, base: str = "fp-a") -> str:
        adapter.write_bytes(lora)
        heads.write_bytes(head)
        return catalog_cache_key(tmp_path, items, model, backbone=base)

    first = key(b"lora", b"heads")
    assert key(b"lora", b"heads") == first
    assert len({first, key(b"LORA", b"heads"), key(b"lora", b"HEADS"), key(b"lora", b"heads", "fp-b")}) == 4


def test_the_item_hash_is_the_one_saved_vectors_carry():
    """`_hash_items` builds each item's dict shallowly (5x faster than `asdict` at 100k items); the
    digest must stay the one written into saved item_vectors (the shipped model's among them), or
    every saved catalog would be encoded again."""
    import dataclasses
    import hashlib
    import json

    from pecrs.data import Item
    from pecrs.testing import toy_items
    from pecrs.vector_cache import _hash_items

    items = [*toy_items(), Item(id="é/1", title="Amélie", year=None, actors=("Audrey Tautou",), genres=())]
    before = hashlib.sha256()
    for it in items:
        before.update(json.dumps(dataclasses.asdict(it), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    assert _hash_items(items) == before.hexdigest()
