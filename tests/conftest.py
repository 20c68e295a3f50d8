import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

# In CI (CI=true, as .ci/run sets it) nothing the suite needs may be missing: a test skipped
# because the shared datasets or a browser are absent fails instead, so a green run means that
# every test ran. Elsewhere such tests skip.
IN_CI = os.environ.get("CI", "").strip().lower() == "true"
REQUIRED_IN_CI = re.compile(r"datasets? (not found|not present)|no chromium", re.IGNORECASE)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        (pytest.fail if IN_CI else pytest.skip)(f"datasets not found at {SHARED}")
    return SHARED


@pytest.fixture
def run_benchmark():
    """run_benchmark(script, *args, tmp_path=...) runs benchmarks/<script>.py as the command line
    does (benchmarks are scripts, not a package) on one thread, checks that it exits 0 and ends
    with its SUMMARY line, and returns the JSON it wrote to tmp_path."""
    def run(script: str, *args: str, tmp_path) -> dict:
        out = tmp_path / f"{script}.json"
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args, "--threads", "1",
                               "--json-out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1].startswith("SUMMARY ")
        return json.loads(out.read_text())
    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if REQUIRED_IN_CI.search(reason):
            report.outcome = "failed"
            report.longrepr = f"required in CI (CI=true), but missing: {reason}"


def pytest_configure(config):
    # Tiny models are dominated by per-op overhead, where a second intra-op thread only adds
    # synchronisation (30x slower when another process holds the other core).
    import torch

    torch.set_num_threads(1)
