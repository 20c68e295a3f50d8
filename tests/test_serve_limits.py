"""The server's limits (pecrs.serve): a body limit that holds for chunked requests too, error
replies that never echo large input, and no page that loads remote assets."""
import asyncio
import json
import re
import socket
import threading
import time

import pytest

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from pecrs.recommender import Recommender  # noqa: E402
from pecrs.serve import MAX_BODY_BYTES, MAX_MESSAGE_CHARS, MAX_TURNS, create_app  # noqa: E402
from pecrs.testing import make_tiny_run  # noqa: E402

SEEKER = {"role": "seeker", "text": "I'd like a comedy for tonight"}
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("limits"))
    return create_app(Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def _asgi_post(app, chunks, headers=()):
    """POST /recommend straight through ASGI with a body fed chunk by chunk (as a chunked request
    arrives); returns (status, reply body, number of chunks the app pulled)."""
    pulled, sent = 0, []
    chunks = iter(chunks)

    async def receive():
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "query_string": b"",
             "root_path": "", "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"content-type", b"application/json"), *headers]}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, pulled


def test_chunked_body_is_cut_off_at_the_limit(app):
    total = 16 * MAX_BODY_BYTES                      # 16 MiB offered, in 64 KiB chunks
    status, body, pulled = _asgi_post(app, (b"x" * CHUNK for _ in range(total // CHUNK)))
    assert status == 413 and b"request body over" in body
    assert pulled <= MAX_BODY_BYTES // CHUNK + 1     # stopped at the first chunk past the limit


def test_declared_length_over_the_limit_is_refused_unread(app):
    status, _, pulled = _asgi_post(app, (b"x" * CHUNK for _ in range(100)),
                                   headers=[(b"content-length", str(MAX_BODY_BYTES + 1).encode())])
    assert status == 413 and pulled == 0


def test_body_under_the_limit_in_chunks_is_served(app):
    raw = json.dumps({"turns": [SEEKER], "k": 2}).encode()
    status, body, _ = _asgi_post(app, (raw[i:i + 7] for i in range(0, len(raw), 7)))
    assert status == 200 and len(json.loads(body)["items"]) == 2


def test_real_server_answers_413_before_a_chunked_body_ends(app):
    """uvicorn on a loopback port: a chunked body that never ends gets its 413 once past the limit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
            try:
                for _ in range(MAX_BODY_BYTES // CHUNK + 2):    # just past the limit; no last chunk
                    s.sendall(chunk)
            except OSError:
                pass                                             # the server may close first
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
            assert b"connection: close" in reply.lower()
            while True:                     # the server closes the connection (no keep-alive
                try:                        # that would read and drop the rest of the body)
                    data = s.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
    finally:
        server.should_exit = True
        thread.join(10)


def test_validation_errors_do_not_echo_the_request(client):
    r = client.post("/recommend", json={"turns": [SEEKER] * 10_000})
    assert r.status_code == 422 and len(r.content) < 4000
    assert ["body", "turns"] in [e["loc"] for e in r.json()["detail"]]
    big = "y" * 500_000
    for body in ({"turns": [{"role": "seeker", "text": big}]},
                 {"turns": [SEEKER], big: 1},
                 {"turns": [{"role": big, "text": "hi"}]},
                 {"turns": [SEEKER], "decoding": big},
                 {"turns": [SEEKER], "k": big}):
        r = client.post("/respond", json=body)
        assert r.status_code == 422 and len(r.content) < 4000, (r.status_code, len(r.content))
        assert all("input" not in e for e in r.json()["detail"])


def test_many_errors_are_counted_not_listed(client):
    r = client.post("/recommend", json={"turns": [{"role": "bot", "text": ""}] * MAX_TURNS})
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 21 and "more errors" in detail[-1]["msg"]


def test_other_errors_are_clipped(client):
    big = "z" * 200_000
    r = client.post("/recommend", json={"turns": [{"role": "seeker", "text": "[ITEM]", "items": [big]}]})
    assert r.status_code == 400 and len(r.json()["detail"]) <= MAX_MESSAGE_CHARS
    r = client.get("/items/" + "q" * 20_000)
    assert r.status_code == 404 and len(r.json()["detail"]) <= MAX_MESSAGE_CHARS


def test_deeply_nested_json_is_a_client_error(client):
    r = client.post("/recommend", content=b"[" * 200_000, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and len(r.content) < 4000
    assert client.get("/health").status_code == 200


def test_no_remote_assets(client):
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "PECRS"
    page = client.get("/").text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
    assert not re.search(r"""@import|url\(\s*["']?(https?:)?//""", page, re.I)
