import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"datasets not found at {SHARED}")
    return SHARED


def pytest_configure(config):
    # Tiny models are dominated by per-op overhead, where a second intra-op thread only adds
    # synchronisation (30x slower when another process holds the other core).
    import torch

    torch.set_num_threads(1)
