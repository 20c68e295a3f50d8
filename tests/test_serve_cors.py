"""CORS in `pecrs serve` (pecrs.serve, `--cors-origin`): off by default, on for the origins named,
"*" for any, never with credentials; an origin no browser sends is refused before a model loads."""
import pytest

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from pecrs.recommender import Recommender  # noqa: E402
from pecrs.serve import check_cors_origin, create_app  # noqa: E402
from pecrs.testing import make_tiny_run  # noqa: E402

SEEKER = {"role": "seeker", "text": "I'd like a comedy for tonight"}
APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://elsewhere.example.org"
ALLOW_ORIGIN = "access-control-allow-origin"


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    run_dir, items = make_tiny_run(tmp_path_factory.mktemp("cors"))
    return Recommender.from_pretrained(run_dir, catalog=items, device="cpu", cache_dir=False)


def _client(rec, cors_origins=None):
    return TestClient(create_app(rec, cors_origins=cors_origins))


def _preflight(client, path, origin, method="POST"):
    """What a browser asks before a cross-origin POST of JSON."""
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": "content-type"})


def test_no_cors_headers_by_default(rec):
    with _client(rec) as c:
        r = c.post("/recommend", json={"turns": [SEEKER], "k": 2}, headers={"Origin": APP_ORIGIN})
        assert r.status_code == 200 and ALLOW_ORIGIN not in r.headers
        assert ALLOW_ORIGIN not in c.get("/health", headers={"Origin": APP_ORIGIN}).headers
        assert ALLOW_ORIGIN not in _preflight(c, "/recommend", APP_ORIGIN).headers
    with _client(rec, cors_origins=[]) as c:     # an empty list is no CORS too
        assert ALLOW_ORIGIN not in c.get("/health", headers={"Origin": APP_ORIGIN}).headers


@pytest.mark.parametrize("path", ["/recommend", "/respond"])
def test_an_allowed_origin_can_post(rec, path):
    with _client(rec, cors_origins=[OTHER_ORIGIN, APP_ORIGIN]) as c:
        pre = _preflight(c, path, APP_ORIGIN)
        assert pre.status_code == 200 and pre.headers[ALLOW_ORIGIN] == APP_ORIGIN
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "content-type" in pre.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in pre.headers
        r = c.post(path, json={"turns": [SEEKER], "seed": 0} if path == "/respond" else {"turns": [SEEKER]},
                   headers={"Origin": APP_ORIGIN})
        assert r.status_code == 200 and r.headers[ALLOW_ORIGIN] == APP_ORIGIN
        assert "access-control-allow-credentials" not in r.headers
        assert "Origin" in r.headers["vary"]      # a cache keeps one answer per origin


def test_error_replies_carry_the_header_and_retry_after_is_readable(rec):
    """A page reads why a request failed (422, 413) and how long to wait after a 503."""
    with _client(rec, cors_origins=[APP_ORIGIN]) as c:
        bad = c.post("/recommend", json={"turns": []}, headers={"Origin": APP_ORIGIN})
        assert bad.status_code == 422 and bad.headers[ALLOW_ORIGIN] == APP_ORIGIN
        big = c.post("/recommend", content=b" " * (2 << 20),
                     headers={"Origin": APP_ORIGIN, "Content-Type": "application/json"})
        assert big.status_code == 413 and big.headers[ALLOW_ORIGIN] == APP_ORIGIN
        assert "retry-after" in bad.headers["access-control-expose-headers"].lower()


def test_a_503_carries_the_header_and_its_retry_after(rec, monkeypatch):
    import pecrs.serve as serve_module

    monkeypatch.setattr(serve_module, "MAX_WAITING", 0)   # every model call finds the queue full
    with _client(rec, cors_origins=[APP_ORIGIN]) as c:
        r = c.post("/recommend", json={"turns": [SEEKER]}, headers={"Origin": APP_ORIGIN})
        assert r.status_code == 503 and r.headers[ALLOW_ORIGIN] == APP_ORIGIN
        assert r.headers["retry-after"] == str(serve_module.RETRY_AFTER_S)
        assert "retry-after" in r.headers["access-control-expose-headers"].lower()


def test_a_disallowed_origin_gets_no_header(rec):
    with _client(rec, cors_origins=[APP_ORIGIN]) as c:
        r = c.post("/recommend", json={"turns": [SEEKER]}, headers={"Origin": OTHER_ORIGIN})
        assert ALLOW_ORIGIN not in r.headers
        pre = _preflight(c, "/recommend", OTHER_ORIGIN)
        assert pre.status_code == 400 and ALLOW_ORIGIN not in pre.headers
        # Methods the API does not use, and headers beyond Content-Type, are not allowed either.
        assert _preflight(c, "/recommend", APP_ORIGIN, method="DELETE").status_code == 400
        auth = c.options("/recommend", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization"})
        assert auth.status_code == 400


def test_star_allows_any_origin(rec):
    with _client(rec, cors_origins=["*"]) as c:
        pre = _preflight(c, "/recommend", OTHER_ORIGIN)
        assert pre.status_code == 200 and pre.headers[ALLOW_ORIGIN] == "*"
        r = c.post("/recommend", json={"turns": [SEEKER]}, headers={"Origin": OTHER_ORIGIN})
        assert r.status_code == 200 and r.headers[ALLOW_ORIGIN] == "*"
        assert "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize("origin", ["*", "https://app.example.com", "http://localhost:5173", "http://127.0.0.1:8080",
                                    "http://[::1]:3000", "https://a-b.example.co.uk", "http://my_host.lan:8080",
                                    "https://example.com.", "http://[2001:db8::1]"])
def test_origins_a_browser_sends_are_accepted(origin):
    assert check_cors_origin(origin) == origin


@pytest.mark.parametrize("origin, why", [
    ("https://app.example.com/", "drop the trailing slash"),
    ("https://app.example.com/chat", "drop the path, query or fragment"),
    ("https://app.example.com?x=1", "drop the path, query or fragment"),
    ("app.example.com", "not an origin"),
    ("null", "sandboxed pages and file://"),
    ("http://127.1", "not an IPv4 address as browsers write it"),
    ("http://0x7f.0.0.1", "not an IPv4 address as browsers write it"),
    ("http://1.2.3.4.5", "not an IPv4 address as browsers write it"),
    ("http://[::ffff:127.0.0.1]", "browsers write this address as 127.0.0.1"),
    ("http://[0:0::1]", "browsers write this address as [::1]"),
    ("http://[1]", "[1] is not an IPv6 address"),
    ("https://bücher.de", "punycode form: xn--bcher-kva.de"),
    ("", "not an origin"),
    ("ftp://app.example.com", "the scheme is ftp, not http or https"),
    ("://app.example.com", "the scheme is missing"),
    ("https://App.Example.com", "lower case"),
    ("https://app.example.com:443", "drop :443, https's default port"),
    ("http://app.example.com:80", "drop :80, http's default port"),
    ("http://localhost:99999", "port 99999 is not a port from 1 to 65535"),
    ("http://localhost:0", "port 0 is not"),
    ("https://", "not a host[:port]"),
    ("https://user@app.example.com", "not a host[:port]"),
    ("https://app.example.com ", "not a host[:port]"),
    ("https://app..example.com", "not a host[:port]"),
])
def test_origins_no_browser_sends_are_refused(origin, why):
    with pytest.raises(ValueError) as e:
        check_cors_origin(origin)
    assert why in str(e.value) and repr(origin) in str(e.value) and "scheme://host[:port]" in str(e.value)


def test_create_app_refuses_a_bad_origin(rec):
    with pytest.raises(ValueError, match="cors_origins: 'https://app.example.com/': drop the trailing slash"):
        create_app(rec, cors_origins=[APP_ORIGIN, "https://app.example.com/"])
    with pytest.raises(TypeError, match="a list of origins"):
        create_app(rec, cors_origins=APP_ORIGIN)
    with TestClient(create_app(rec, cors_origins=(o for o in [APP_ORIGIN]))) as c:   # any iterable
        assert c.get("/health", headers={"Origin": APP_ORIGIN}).headers[ALLOW_ORIGIN] == APP_ORIGIN


def test_cli_refuses_a_bad_origin_before_loading(monkeypatch, capsys):
    import pecrs.cli.serving
    from pecrs.cli import main

    loaded = []
    monkeypatch.setattr(pecrs.cli.serving, "_load_recommender", lambda args: loaded.append(args))
    with pytest.raises(SystemExit) as e:
        main(["serve", "--port", "0", "--cors-origin", APP_ORIGIN, "--cors-origin", "https://app.example.com/"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and loaded == []
    assert "--cors-origin: 'https://app.example.com/': drop the trailing slash" in err


@pytest.mark.parametrize("flags, line", [
    ([], None),
    (["--cors-origin", APP_ORIGIN, "--cors-origin", "http://localhost:5173"],
     f"CORS: pages from {APP_ORIGIN}, http://localhost:5173 can call this API"),
    (["--cors-origin", "*"], "CORS: any origin (*): any page on the web can call this API"),
])
def test_cli_passes_the_origins_and_says_so(flags, line, monkeypatch, capsys):
    import pecrs.cli.serving
    import pecrs.serve
    from pecrs.cli import main

    served = {}
    monkeypatch.setattr(pecrs.cli.serving, "_load_recommender", lambda args: "the model")
    monkeypatch.setattr(pecrs.serve, "serve", lambda rec, **kw: served.update(rec=rec, **kw))
    assert main(["serve", "--port", "0", *flags]) == 0
    err = capsys.readouterr().err
    assert served["cors_origins"] == (flags[1::2] or None)
    assert ("CORS:" in err) == (line is not None) and (line is None or line in err)
