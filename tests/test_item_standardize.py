"""model.item_standardize: the pooled item states centred and scaled by statistics of the training
catalog, fitted once before training, saved with the heads and read back on resume and load."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from pecrs.catalog import ItemStore
from pecrs.experiments.keys import train_key
from pecrs.heads import ItemEncoder
from pecrs.pretrained import build_model, load_pretrained, load_weights
from pecrs.prepare import prepare
from pecrs.testing import tiny_config, write_dataset
from pecrs.train import train


def test_the_encoder_standardizes_the_pooled_state_before_the_head():
    torch.manual_seed(0)
    d, L = 8, 5
    plain = ItemEncoder(d, L)
    standard = ItemEncoder(d, L, standardize=True)
    standard.load_state_dict(plain.state_dict(), strict=False)
    states = torch.randn(20, L, d) * 3 + torch.arange(d) * 10   # a large shared mean, as LM states have
    states[:, :, 2] = 7.0                                      # one constant dimension
    mask = torch.ones(20, L)
    mask[:5, 3:] = 0
    # Before fitting: the identity, so the encoder is the paper's.
    assert torch.allclose(standard(states, mask), plain(states, mask))
    pooled = standard.pool(states, mask)
    standard.fit_standardization(pooled)
    z = (pooled - standard.pooled_mean) / standard.pooled_scale
    varying = torch.arange(d) != 2
    assert torch.allclose(z.mean(0), torch.zeros(d), atol=1e-5)
    assert torch.allclose(z.std(0)[varying], torch.ones(d - 1), atol=1e-5)
    assert torch.isfinite(z).all() and z[:, 2].abs().max() < 1e-3   # the floor keeps it finite
    assert torch.allclose(standard(states, mask), standard.head(z), atol=1e-5)
    # What it is for: pooled states that are nearly parallel come out decorrelated.
    cos = torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None], dim=-1).mean()
    cos_z = torch.nn.functional.cosine_similarity(z[:, None], z[None], dim=-1).mean()
    assert cos > 0.9 and cos_z < 0.2
    with pytest.raises(ValueError, match="without standardize"):
        plain.fit_standardization(pooled)


def test_base_pooled_states_are_the_same_cached_or_not(tmp_path):
    write_dataset(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data")
    cfg.model.item_standardize = True
    setup = prepare(cfg)
    cached = setup.store.base_pooled_states(setup.model, batch_size=3)
    fresh = ItemStore(setup.store.items, setup.model.tokenizer, cfg.model.item_fields, cfg.model.item_max_tokens)
    assert fresh.states is None
    assert torch.allclose(fresh.base_pooled_states(setup.model, batch_size=5), cached, atol=2e-3)  # float16 cache


def test_training_fits_the_statistics_keeps_them_on_resume_and_in_the_checkpoint(tmp_path):
    write_dataset(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data")
    cfg.model.item_standardize = True
    assert train_key(cfg) != train_key(tiny_config(tmp_path / "data"))   # a new setting, a new key

    # Fitted before the first step, from the frozen base's pooled states of the catalog.
    setup = prepare(cfg)
    expected = ItemEncoder(setup.model.hidden_size, cfg.model.item_max_tokens, standardize=True)
    expected.fit_standardization(setup.store.base_pooled_states(setup.model))
    train(cfg, tmp_path / "run", progress=False, stop_after_steps=2)
    heads = load_file(tmp_path / "run" / "last" / "heads.safetensors")
    assert torch.allclose(heads["item_encoder.pooled_mean"], expected.pooled_mean, atol=1e-4)
    assert torch.allclose(heads["item_encoder.pooled_scale"], expected.pooled_scale, atol=1e-4)
    assert not torch.allclose(expected.pooled_mean, torch.zeros_like(expected.pooled_mean))

    # A resumed run reads its statistics back instead of fitting them again.
    marker = {**heads, "item_encoder.pooled_mean": torch.full_like(heads["item_encoder.pooled_mean"], 0.25)}
    save_file(marker, tmp_path / "run" / "last" / "heads.safetensors")
    train(cfg, tmp_path / "run", progress=False)
    for folder in ("last", "best"):
        saved = load_file(tmp_path / "run" / folder / "heads.safetensors")
        assert torch.equal(saved["item_encoder.pooled_mean"], marker["item_encoder.pooled_mean"]), folder

    # A loaded checkpoint encodes items with them.
    model, loaded_cfg = load_pretrained(tmp_path / "run" / "best")
    assert loaded_cfg.model.item_standardize and model.item_encoder.standardize
    assert torch.equal(model.item_encoder.pooled_mean, marker["item_encoder.pooled_mean"])
    # ...and a model built without the setting has no such weights to load (an old checkpoint
    # loads as before; a standardized one into a plain model is refused, naming the file).
    cfg.model.item_standardize = False
    plain = build_model(cfg, seed=0)
    assert not any("pooled_" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="heads.safetensors.*unexpected.*pooled_mean"):
        load_weights(plain, tmp_path / "run" / "best")


def test_without_pooling_an_item_is_its_last_real_token_and_sigma_has_a_floor():
    """Table 5's "w/o item pooling": the LM state of each item's last real token (padding after
    it read by nobody). Standardization floors sigma at 1e-3 of the largest, so a dimension that
    is constant over the catalog is not blown up."""
    states = torch.arange(40, dtype=torch.float32).reshape(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    encoder = ItemEncoder(4, 5, pooling=False, head=False)
    assert torch.equal(encoder(states, mask), torch.stack([states[0, 2], states[1, 4]]))

    standardizing = ItemEncoder(3, 5, standardize=True)
    standardizing.fit_standardization(torch.tensor([[1.0, 5.0, 0.0], [3.0, 5.0, 10.0], [5.0, 5.0, 20.0]]))
    assert torch.allclose(standardizing.pooled_scale, torch.tensor([2.0, 1e-3 * 10.0, 10.0]))
