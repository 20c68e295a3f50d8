"""How `pecrs serve` queues model calls, on a real uvicorn server: /health never waits behind them,
a request whose client has left is not run, a full queue answers 503, and bodies that cannot be
read are named."""
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("httpx")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pecrs import serve as serve_module  # noqa: E402
from pecrs.recommender import Recommender  # noqa: E402
from pecrs.serve import create_app  # noqa: E402
from pecrs.testing import make_tiny_run  # noqa: E402

SEEKER = {"role": "seeker", "text": "I'd like a comedy for tonight"}
SLOW_S = 0.6


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("queue"))
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


@pytest.fixture
def slow_server(rec, monkeypatch):
    """uvicorn on a loopback port around `rec`, whose recommend takes SLOW_S and is counted."""
    import uvicorn

    calls = []
    inner = rec.recommend

    def slow_recommend(*args, **kwargs):
        calls.append(time.time())
        time.sleep(SLOW_S)
        return inner(*args, **kwargs)

    monkeypatch.setattr(rec, "recommend", slow_recommend)
    app = create_app(rec)

    async def two_worker_threads(scope, receive, send):
        # AnyIO's pool has 40 threads: cut to 2, a handler that needs one waits behind model calls
        # that hold them, which is what 40 queued requests do to a real server.
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        await app(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(two_worker_threads, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    yield url, calls
    server.should_exit = True
    thread.join(10)


def _recommend(url):
    return httpx.post(f"{url}/recommend", json={"turns": [SEEKER], "k": 2}, timeout=60)


def test_health_answers_while_model_calls_queue(slow_server):
    url, calls = slow_server
    with ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(_recommend, url) for _ in range(6)]      # ~3.6 s of model time
        time.sleep(SLOW_S / 2)
        started = time.perf_counter()
        health = httpx.get(f"{url}/health", timeout=10).json()
        waited = time.perf_counter() - started
        assert waited < SLOW_S and health["waiting"] >= 2 and health["dtype"] in ("float32", "bfloat16")
        assert all(p.result().status_code == 200 for p in pending)
    assert len(calls) == 6


def test_a_request_whose_client_left_is_not_run(slow_server):
    url, calls = slow_server
    told = []
    handler = logging.Handler()
    handler.emit = lambda record: told.append(record.getMessage())
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(handler)
    level = server_log.level
    server_log.setLevel(logging.INFO)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_recommend, url)          # holds the model for SLOW_S
        time.sleep(SLOW_S / 4)
        body = json.dumps({"turns": [SEEKER]}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:    # sent, then gone before its turn
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.1)
        assert first.result().status_code == 200
    time.sleep(0.3)
    server_log.removeHandler(handler)
    server_log.setLevel(level)
    assert len(calls) == 1                             # the abandoned request cost no model time
    assert any("client left before its turn" in m for m in told)
    assert _recommend(url).status_code == 200 and len(calls) == 2


def test_a_client_that_leaves_during_its_call_frees_the_queue(slow_server):
    """The running call ends (a model call is not interrupted), the queue count goes back to 0 and
    the next request is served."""
    url, calls = slow_server
    body = json.dumps({"turns": [SEEKER]}).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(SLOW_S / 3)                         # its call is running now
    assert len(calls) == 1
    time.sleep(SLOW_S)
    assert httpx.get(f"{url}/health", timeout=10).json()["waiting"] == 0
    assert _recommend(url).status_code == 200 and len(calls) == 2


def test_a_full_queue_answers_503_with_retry_after(slow_server, monkeypatch):
    url, calls = slow_server
    monkeypatch.setattr(serve_module, "MAX_WAITING", 2)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(_recommend, url)]
        time.sleep(SLOW_S / 4)
        held.append(pool.submit(_recommend, url))
        time.sleep(SLOW_S / 4)
        refused = _recommend(url)
        assert refused.status_code == 503 and refused.headers["retry-after"] == str(serve_module.RETRY_AFTER_S)
        assert "waiting for the model" in refused.json()["detail"]
        assert [p.result().status_code for p in held] == [200, 200]
    assert len(calls) == 2


def test_unreadable_bodies_are_named(rec):
    with TestClient(create_app(rec)) as client:
        latin1 = '{"turns": [{"role": "seeker", "text": "café"}]}'.encode("latin-1")
        r = client.post("/recommend", content=latin1, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not UTF-8 (byte 42)" in r.json()["detail"]
        r = client.post("/recommend", content=b"[" * 200_000, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["detail"]
        r = client.post("/recommend", content=b'{"turns": [', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "Expecting value" in r.json()["detail"][0]["msg"]
        r = client.post("/recommend", json={"turns": [{"role": "seeker", "text": " \n\t "}]})
        assert r.status_code == 422 and "only spaces" in r.json()["detail"][0]["msg"]


def test_serve_stops_within_the_graceful_timeout(rec, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    serve_module.serve(rec, port=0)
    assert seen["timeout_graceful_shutdown"] == serve_module.GRACEFUL_SHUTDOWN_S
