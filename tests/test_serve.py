"""The HTTP API (pecrs.serve) through FastAPI's TestClient: good requests, every kind of bad one,
and concurrent requests."""
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from pecrs.recommender import Recommender  # noqa: E402
from pecrs.serve import MAX_TEXT_CHARS, MAX_TURNS, create_app  # noqa: E402
from pecrs.testing import make_tiny_run  # noqa: E402

SEEKER = {"role": "seeker", "text": "I'd like a comedy for tonight"}


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("serve"))
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


@pytest.fixture(scope="module")
def client(rec):
    with TestClient(create_app(rec)) as c:
        yield c


def test_health_and_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["items"] == 12 and "top_k" in h["decodings"]
    assert h["no_repeat_ngram"] == 0
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/respond" in page.text


def test_recommend(client, rec):
    r = client.post("/recommend", json={"turns": [SEEKER], "k": 3})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["rank"] for i in items] == [1, 2, 3]
    assert set(items[0]) == {"id", "title", "year", "genres", "score", "rank"}
    expected = rec.recommend([SEEKER], k=3)
    assert [i["id"] for i in items] == [e.item.id for e in expected]
    assert [i["score"] for i in items] == pytest.approx([e.score for e in expected])
    assert len(client.post("/recommend", json={"turns": [SEEKER]}).json()["items"]) == 10  # default k


def test_respond_and_continue(client, rec):
    body = {"turns": [SEEKER], "seed": 5, "k_items": 2, "decoding": "greedy"}
    r = client.post("/respond", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    expected = rec.respond([SEEKER], decoding="greedy", k_items=2, seed=5)
    assert data["response"] == expected.text and data["raw_response"] == expected.raw_text
    assert [i["id"] for i in data["recommended"]] == [it.id for it in expected.recommended]
    assert data["turn"] == {"role": "recommender", "text": expected.raw_text,
                            "items": [it.id for it in expected.items]}
    # The returned turn is a valid turn of the next request, even when the model said nothing.
    more = {"turns": [SEEKER, data["turn"], {"role": "seeker", "text": "Thanks!"}], "seed": 1}
    assert client.post("/respond", json=more).status_code == 200
    silent = {"role": "recommender", "text": "", "items": []}
    assert client.post("/respond", json={**more, "turns": [SEEKER, silent, more["turns"][2]]}).status_code == 200


def test_items(client):
    item = client.get("/items/3").json()
    assert item["title"] == "Movie 3" and item["year"] == 2003 and item["genres"] == ["Horror"]
    assert item["plot"] == "plot number 3" and item["actors"] == ["Actor 3"]
    r = client.get("/items/does-not-exist")
    assert r.status_code == 404 and "unknown item id 'does-not-exist'" in r.json()["detail"]


def _locs(response):
    return [tuple(e["loc"]) for e in response.json()["detail"]]


@pytest.mark.parametrize("path, body, loc", [
    ("/recommend", {"turns": [SEEKER], "k": 3, "user": "x"}, ("body", "user")),             # unknown field
    ("/recommend", {"turns": [{**SEEKER, "mood": "happy"}]}, ("body", "turns", 0, "mood")),
    ("/recommend", {"turns": [SEEKER] * (MAX_TURNS + 1)}, ("body", "turns")),                # too many turns
    ("/recommend", {"turns": []}, ("body", "turns")),                                        # no turns
    ("/recommend", {}, ("body", "turns")),
    ("/recommend", {"turns": [{"role": "bot", "text": "hi"}]}, ("body", "turns", 0, "role")),
    ("/recommend", {"turns": [{"role": "seeker", "text": "x" * (MAX_TEXT_CHARS + 1)}]},
     ("body", "turns", 0, "text")),
    ("/recommend", {"turns": [{"role": "seeker", "text": ""}]}, ("body", "turns", 0, "text")),
    ("/recommend", {"turns": [SEEKER], "k": 0}, ("body", "k")),                               # k range
    ("/recommend", {"turns": [SEEKER], "k": 101}, ("body", "k")),
    ("/recommend", {"turns": [SEEKER], "k": "many"}, ("body", "k")),
    ("/respond", {"turns": [SEEKER], "decoding": "telepathy"}, ("body", "decoding")),
    ("/respond", {"turns": [SEEKER], "k_items": 11}, ("body", "k_items")),
    ("/respond", {"turns": [SEEKER], "seed": -1}, ("body", "seed")),
    # strict types, as the Python API: no bool or text for a count, no text for a flag
    ("/recommend", {"turns": [SEEKER], "k": True}, ("body", "k")),
    ("/recommend", {"turns": [SEEKER], "k": "3"}, ("body", "k")),
    ("/recommend", {"turns": [SEEKER], "exclude_mentioned": "yes"}, ("body", "exclude_mentioned")),
    ("/respond", {"turns": [SEEKER], "link_titles": "on"}, ("body", "link_titles")),
    ("/recommend", {"turns": [SEEKER], "k": 5.0}, ("body", "k")),
    ("/respond", {"turns": [SEEKER], "seed": "7"}, ("body", "seed")),
])
def test_invalid_requests_are_422(client, path, body, loc):
    r = client.post(path, json=body)
    assert r.status_code == 422
    assert loc in _locs(r)


def test_an_unknown_decoding_is_said_once_with_the_valid_names(client):
    """A field's ValueError is pydantic's msg already; only malformed JSON gets the parser's reason
    appended (doubled, the valid names were clipped away)."""
    r = client.post("/respond", json={"turns": [SEEKER], "decoding": "telepathy"})
    msg = r.json()["detail"][0]["msg"]
    assert r.status_code == 422 and msg.count("telepathy") == 1 and "top_k" in msg and not msg.endswith("...")
    r = client.post("/recommend", content=b'{"turns": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("JSON decode error: ")


def test_a_key_written_twice_in_a_body_is_refused(client):
    """As data files and configs: plain JSON would keep the last value ({"k": 1, "k": 5}: 5 items)."""
    for body in (b'{"turns": [{"role": "seeker", "text": "hi"}], "k": 1, "k": 5}',
                 b'{"turns": [{"role": "seeker", "text": "hi", "text": "bye"}]}'):
        r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, body
        assert "is written twice in one object" in r.json()["detail"][0]["msg"]
    r = client.post("/recommend", content=b'{"turns": [{"role": "seeker", "text": "hi"}], "k": 2}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["items"]) == 2


@pytest.mark.parametrize("turn, message", [
    ({"role": "seeker", "text": "like [ITEM]", "items": ["404"]}, "item id '404' is not in the catalog"),
    ({"role": "seeker", "text": "like [ITEM]"}, "1 [ITEM] placeholder(s) but 0 item id(s)"),
])
def test_unusable_turns_are_400(client, turn, message):
    r = client.post("/recommend", json={"turns": [turn]})
    assert r.status_code == 400 and message in r.json()["detail"]


def test_malformed_bodies(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/recommend", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413
    body = b'{"turns": [{"role": "seeker", "text": "hi"}]}'
    for media_type in ("text/plain", "application/x-www-form-urlencoded"):   # curl -d sends the second
        r = client.post("/recommend", content=body, headers={"content-type": media_type})
        assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"], media_type
    assert client.post("/recommend", content=body, headers={"content-type": "application/json; charset=utf-8"}
                       ).status_code == 200
    r = client.post("/recommend", json={"turns": [SEEKER], "k": 0})     # a JSON body with a bad field: 422
    assert r.status_code == 422 and ("body", "k") in _locs(r)
    assert client.get("/health").status_code == 200      # still up


def test_concurrent_requests_are_safe(client, rec):
    expected = [r.item.id for r in rec.recommend([SEEKER], k=4)]
    reply = rec.respond([SEEKER], seed=9).text

    def call(i):
        if i % 2:
            return client.post("/respond", json={"turns": [SEEKER], "seed": 9}).json()["response"]
        return [x["id"] for x in client.post("/recommend", json={"turns": [SEEKER], "k": 4}).json()["items"]]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(12)))
    assert all(r == (reply if i % 2 else expected) for i, r in enumerate(results))


class Replaced:
    """The recommender `rec` with some of its methods replaced (`methods`: name -> function)."""
    def __init__(self, rec, **methods):
        self._rec, self._methods = rec, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._rec, name)

    def __len__(self):
        return len(self._rec)


def test_a_reply_naming_an_item_twice_lists_it_once(rec):
    """docs/serving.md: `items` lists each item the reply names once; the turn has one id per [ITEM]
    (what the next request sends back)."""
    film = rec.item_list[0]
    repeating = Replaced(rec, respond=lambda *a, **k: rec._fill("[ITEM] is great, and [ITEM] again", [film]))
    with TestClient(create_app(repeating)) as c:
        data = c.post("/respond", json={"turns": [SEEKER]}).json()
    assert data["turn"]["items"] == [film.id, film.id]
    assert [i["id"] for i in data["items"]] == [film.id]


def test_internal_errors_keep_the_server_up(rec):
    def broken(*a, **k):
        raise RuntimeError("boom")

    with TestClient(create_app(Replaced(rec, recommend=broken)), raise_server_exceptions=False) as c:
        r = c.post("/recommend", json={"turns": [SEEKER]})
        assert r.status_code == 500 and "boom" in r.json()["detail"]
        assert c.get("/health").status_code == 200


def test_cli_serve_other_catalog_reports_bad_lines(tmp_path, monkeypatch, capsys):
    """`pecrs serve RUN --catalog FILE`: bad lines are counted and shown, the rest is served."""
    import json

    import pecrs.serve
    from pecrs.cli import main

    run_dir, _ = make_tiny_run(tmp_path / "run")
    lines = [json.dumps({"id": f"n{i}", "title": f"New {i}", "genres": ["Drama"]}) for i in range(5)]
    lines[1:1] = ['{"id": "broken"', json.dumps({"id": "n9", "year": 1999}), json.dumps({"id": "n0", "title": "dup"})]
    catalog = tmp_path / "new.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    served = {}
    monkeypatch.setattr(pecrs.serve, "serve", lambda rec, **kw: served.update(rec=rec, **kw))
    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))
    assert main(["serve", str(run_dir), "--catalog", str(catalog), "--port", "8123", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "5 items; skipped 3 bad line(s)" in err and "malformed JSON" in err and "duplicate item id 'n0'" in err
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    with TestClient(create_app(served["rec"])) as c:
        assert c.get("/items/n3").json()["title"] == "New 3"
        assert c.get("/items/n9").status_code == 404
        assert {i["id"] for i in c.post("/recommend", json={"turns": [SEEKER]}).json()["items"]} == \
            {f"n{i}" for i in range(5)}
    catalog.write_text("not json\n")
    assert main(["serve", str(run_dir), "--catalog", str(catalog)]) == 2    # nothing usable: an error
    assert "no valid items" in capsys.readouterr().err


def test_cli_serve_refuses_a_saved_models_own_damaged_catalog(tmp_path, monkeypatch, capsys):
    """Only a catalog of the user's (--catalog) is read leniently: a saved model whose own
    items.jsonl has a bad line is damaged, and serving part of its catalog would hide that."""
    import pecrs.serve
    from pecrs.cli import main
    from pecrs.recommender import Recommender

    monkeypatch.setenv("PECRS_CACHE", str(tmp_path / "cache"))
    run_dir, _ = make_tiny_run(tmp_path / "run")
    saved = Recommender.from_pretrained(run_dir, device="cpu").save_pretrained(tmp_path / "saved")
    items = saved / "items.jsonl"
    lines = items.read_text().splitlines()
    items.write_text("\n".join([lines[0], '{"id": "cut', *lines[1:]]) + "\n")
    monkeypatch.setattr(pecrs.serve, "serve", lambda rec, **kw: pytest.fail("served a damaged model"))
    assert main(["serve", str(saved), "--threads", "1"]) == 2
    assert f"{items}:2" in capsys.readouterr().err
    served = {}
    monkeypatch.setattr(pecrs.serve, "serve", lambda rec, **kw: served.update(rec=rec))
    assert main(["serve", str(saved), "--catalog", str(items), "--threads", "1"]) == 0   # given: lenient
    assert len(served["rec"].items) == len(lines) and "skipped 1 bad line(s)" in capsys.readouterr().err


def test_an_item_id_with_a_slash_resolves(tmp_path):
    import dataclasses

    from pecrs.catalog_source import write_items
    from pecrs.testing import toy_items

    run_dir, _ = make_tiny_run(tmp_path)
    items = [dataclasses.replace(it, id=f"imdb/{it.id}") for it in toy_items()]
    write_items(items, tmp_path / "slashed.jsonl")
    slashed = Recommender.from_pretrained(run_dir, catalog=tmp_path / "slashed.jsonl", device="cpu", cache_dir=False)
    with TestClient(create_app(slashed)) as c:
        for path in ("/items/imdb/3", "/items/imdb%2F3"):   # as typed, and as the page encodes it
            r = c.get(path)
            assert r.status_code == 200 and r.json()["title"] == "Movie 3", path


def test_cli_serve_refuses_a_port_in_use_before_loading(monkeypatch, capsys):
    """A port another process listens on is an error (status 2) before the model and its catalog
    load, which can take minutes, not uvicorn's failure after."""
    import socket

    import pecrs.cli.serving
    from pecrs.cli import main

    loaded = []
    monkeypatch.setattr(pecrs.cli.serving, "_load_recommender", lambda args: loaded.append(args))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert loaded == [] and f"--host 127.0.0.1 --port {port}: cannot listen there" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_cli_refuses_a_missing_catalog_before_loading(command, tmp_path, monkeypatch, capsys):
    import pecrs.cli.serving
    from pecrs.cli import main

    loaded = []
    monkeypatch.setattr(pecrs.cli.serving, "_load_recommender", lambda args: loaded.append(args))
    assert main([command, "--catalog", str(tmp_path / "mine.jsonl")]) == 2
    assert loaded == [] and "mine.jsonl: no such file" in capsys.readouterr().err
    assert main([command, "--catalog", str(tmp_path)]) == 2 and "a folder without items.jsonl" in capsys.readouterr().err


def test_serve_builds_the_title_index_before_the_first_request(tmp_path, monkeypatch):
    """The chat page links typed titles: the index is built at start-up, not inside the first
    request under the model lock (seconds on a large catalog, every other request waiting)."""
    import uvicorn

    from pecrs.serve import serve

    run_dir, items = make_tiny_run(tmp_path)
    fresh = Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)
    assert fresh._linker is None and "twins" not in vars(fresh)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((fresh._linker, "twins" in vars(fresh))))
    serve(fresh, port=0)
    assert len(started) == 1 and started[0][0] is not None and started[0][1]
