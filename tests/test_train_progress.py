"""`pecrs train` shows what it is doing (issue 15, point 3): a status line before each long
silent step (loading the backbone, encoding the catalog, dev evaluation), bars over the catalog
encoding, the epoch and the dev ranking, and the epoch bar's loss refreshed by wall time
(`LOSS_REFRESH_SECONDS`), not read back from the device at every step."""
import re

import pytest

import pecrs.train as train_module
from pecrs.testing import tiny_config, write_dataset
from pecrs.train import train


class CountingBar(train_module.tqdm):
    postfixes: list = []

    def set_postfix(self, *args, **kwargs):
        CountingBar.postfixes.append(kwargs)
        return super().set_postfix(*args, **kwargs)


@pytest.fixture
def config(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data")
    cfg = tiny_config(tmp_path / "data")
    cfg.train.epochs = 1  # 12 samples, batches of 4: 3 steps
    CountingBar.postfixes = []
    monkeypatch.setattr(train_module, "tqdm", CountingBar)
    return cfg


def test_train_prints_status_lines_and_bars(config, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_module, "LOSS_REFRESH_SECONDS", 1e9)
    train(config, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    expected = [r"pecrs: loading dataset ", r"pecrs: loading backbone tiny-llama\n",
                r"pecrs: encoding 16 items", r"encoding items: 100%[^\r\n]* 16/16 ",
                r"pecrs: encoding 12 training samples\n", r"epoch 1/1: 100%[^\r\n]* 3/3 [^\r\n]*loss=\d",
                r"pecrs: dev evaluation: ranking the catalog for 4 samples\n", r"rank: 100%[^\r\n]* 1/1 "]
    found = [re.search(pattern, err) for pattern in expected]
    assert all(found), [p for p, m in zip(expected, found) if not m]
    at = [m.start() for m in found]
    assert at == sorted(at), "in the order the steps run"
    # the loss is read back once (first step), not at every step, when steps are faster than the interval
    assert len(CountingBar.postfixes) == 1


def test_train_bar_loss_refreshes_by_wall_time(config, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "LOSS_REFRESH_SECONDS", 0.0)
    train(config, tmp_path / "run", progress=True)
    assert len(CountingBar.postfixes) == 3  # every step, the interval being 0
    assert all(float(p["loss"]) > 0 for p in CountingBar.postfixes)


def test_quiet_train_prints_nothing_to_stderr(config, tmp_path, capsys):
    train(config, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "pecrs:" not in err and "%|" not in err
    assert CountingBar.postfixes == []
