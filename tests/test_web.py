"""The chat page at / in a real browser: uvicorn on a loopback port, headless Chromium loads
/?say=...&seed=0 (the page sends that message on load), and both the DOM and a screenshot must
show the model's reply. Skipped when no Chromium is installed (Debian: apt-get install chromium)."""
import html
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from pecrs.recommender import Recommender
from pecrs.serve import create_app
from pecrs.testing import make_tiny_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SAY = "I want a scary movie tonight"
SEEKER_BLUE = (47, 111, 222)   # .seeker background in pecrs/web/index.html


@pytest.fixture(scope="module")
def browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (apt-get install chromium)")


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("web"))
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


@pytest.fixture(scope="module")
def server(rec):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))                  # a free loopback port, held: no race
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(rec), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def _chromium(browser, profile, *args):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, timeout=90)


def test_page_chats_in_a_browser(browser, server, rec, tmp_path):
    expected = rec.respond([{"role": "seeker", "text": SAY}], seed=0)
    url = f"{server}/?say={SAY.replace(' ', '%20')}&seed=0"

    dom = _chromium(browser, tmp_path / "profile1", "--dump-dom", url).stdout.decode("utf-8")
    assert 'data-state="replied"' in dom, dom[-2000:]
    reply = re.search(r'<div class="msg recommender" id="reply"><span class="who">recommender</span>(.*?)</div>',
                      dom, re.S)
    assert reply and html.unescape(reply.group(1)) == (expected.text or "(empty reply)")
    assert f">{html.escape(SAY)}</div>" in dom                        # the seeker's message
    shown = expected.items[0] if expected.items else expected.recommended[0]
    assert html.escape(shown.title) in dom                            # the recommended item's card
    assert "12 items" in dom                                          # /health answered

    shot = tmp_path / "page.png"
    result = _chromium(browser, tmp_path / "profile2", "--window-size=900,700", f"--screenshot={shot}", url)
    assert shot.is_file(), result.stderr.decode()[-2000:]
    Image = pytest.importorskip("PIL.Image")
    image = Image.open(shot).convert("RGB")
    assert image.size == (900, 700)
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 50                                           # not a blank page
    blue = sum(n for n, c in colors if all(abs(a - b) <= 8 for a, b in zip(c, SEEKER_BLUE)))
    assert blue > 2000                                                # the seeker bubble and buttons rendered


def test_page_reads_typed_titles_and_excludes_them(browser, server, rec, tmp_path):
    """The page sends link_titles and exclude_mentioned: "Movie 3" is read as the item (shown under
    the message) and the reply is the library's with both options."""
    say = "I loved Movie 3"
    expected = rec.respond([{"role": "seeker", "text": say}], seed=0, link_titles=True, exclude_mentioned=True)
    assert expected.recommended[0].id != "3"
    dom = _chromium(browser, tmp_path / "profile", "--dump-dom",
                    f"{server}/?say={say.replace(' ', '%20')}&seed=0").stdout.decode("utf-8")
    assert 'data-state="replied"' in dom, dom[-2000:]
    assert '<span class="read-as">read as: Movie 3 (2003)</span>' in dom
    reply = re.search(r'<div class="msg recommender" id="reply"><span class="who">recommender</span>(.*?)</div>',
                      dom, re.S)
    assert reply and html.unescape(reply.group(1)) == (expected.text or "(empty reply)")
