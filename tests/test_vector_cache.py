"""Catalog vectors are derived data (pecrs.vector_cache): a cache that cannot be written, a saved
vectors file that is damaged or of another shape, or a foreign file in the cache costs an encoding
and a warning naming the file, never the load."""
import logging
from pathlib import Path

import pytest
import torch

from pecrs.backbone.gguf import _convert_gguf
from pecrs.recommender import Recommender
from pecrs.testing import TURNS, make_tiny_run
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
    assert [r.item.id for r in loaded.recommend(TURNS, k=3)] == [r.item.id for r in rec.recommend(TURNS, k=3)]


@pytest.mark.parametrize("damage", ["truncated", "other width", "not finite"])
def test_damaged_saved_vectors_are_encoded_again(saved, tmp_path, caplog, damage):
    rec, folder = saved
    path = folder / VECTORS_FILE
    original = path.read_bytes()
    try:
        if damage == "truncated":
            path.write_bytes(original[:-40])
        elif damage == "other width":   # the ids hash matches, the width is not this model's
            save_vectors(torch.randn(len(rec), 7), list(rec.items), path)
        else:
            save_vectors(rec.vectors.clone().index_fill_(0, torch.tensor([2]), float("nan")), list(rec.items), path)
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
