"""A bounded local load test of `pecrs serve`: N concurrent clients on loopback.

    python benchmarks/load_test.py                    # runs/tiny (or a random tiny model), 8 clients
    python benchmarks/load_test.py runs/inspired --clients 16 --requests 400 --endpoint respond
    python benchmarks/load_test.py --url http://127.0.0.1:8000   # a server that is already running

Starts `pecrs serve RUN_DIR` on a free 127.0.0.1 port (unless --url), waits for /health, sends
`--requests` requests from `--clients` concurrent clients (stopping early after `--duration`
seconds), then stops the server. Requests cycle through a few dialogues; "mixed" alternates
POST /recommend (k=10) and POST /respond. Prints one JSON object (requests/s, latency percentiles
per endpoint, error count), then a one-line summary.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MAX_CLIENTS, MAX_REQUESTS, MAX_DURATION = 64, 10_000, 600   # the test stays bounded

DIALOGUES = [
    [{"role": "seeker", "text": "Hi! Can you recommend a good horror movie?"}],
    [{"role": "recommender", "text": "Hello, what kind of movies do you like?"},
     {"role": "seeker", "text": "I love funny movies with a bit of romance."}],
    [{"role": "seeker", "text": "Something for a family night with kids"},
     {"role": "recommender", "text": "Do you like animated films?"},
     {"role": "seeker", "text": "Yes, the kids love them, and I like musicals too."}],
    [{"role": "seeker", "text": "I just watched a great sci-fi thriller and want more like it. " * 4}],
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(folder: Path) -> Path:
    """A random tiny-llama checkpoint with a 200-item toy catalog (when runs/tiny is absent)."""
    sys.path.insert(0, str(REPO))
    from pecrs.config import RunConfig
    from pecrs.data import Item
    from pecrs.pretrained import build_model, save_pretrained
    from pecrs.catalog_source import CATALOG_FILE, write_items

    cfg = RunConfig()
    cfg.model.backbone = "tiny-llama"
    cfg.model.item_max_tokens, cfg.model.context_max_tokens, cfg.model.response_max_tokens = 32, 128, 24
    cfg.inference.m_inference = 64
    ckpt = save_pretrained(build_model(cfg, seed=0), cfg, folder / "best")
    genres = ["Action", "Comedy", "Drama", "Horror", "Animation", "Sci-Fi"]
    write_items([Item(str(i), f"Movie {i}", 1950 + i % 70, genres=(genres[i % 6],), plot=f"plot {i}")
                 for i in range(200)], ckpt / CATALOG_FILE)
    return folder


def start_server(run_dir: str, port: int, catalog: str | None, threads: int | None, timeout: float):
    cmd = [sys.executable, "-m", "pecrs.cli", "serve", run_dir, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"] + (["--catalog", catalog] if catalog else []) \
        + (["--threads", str(threads)] if threads else [])
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"pecrs serve exited with {proc.returncode}:\n{log.read().decode()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"pecrs serve did not answer /health within {timeout:.0f} s")


async def load(url: str, clients: int, total: int, duration: float, endpoint: str) -> dict:
    records: list[tuple[str, float, bool]] = []   # (endpoint, seconds, ok)
    counter = iter(range(total))
    deadline = time.monotonic() + duration

    def request(i: int) -> tuple[str, dict]:
        turns = DIALOGUES[i % len(DIALOGUES)]
        kind = endpoint if endpoint != "mixed" else ("recommend", "respond")[i % 2]
        if kind == "recommend":
            return kind, {"turns": turns, "k": 10}
        return kind, {"turns": turns, "seed": i}

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            if time.monotonic() > deadline:
                return
            kind, body = request(i)
            started = time.perf_counter()
            try:
                ok = (await client.post(f"{url}/{kind}", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            records.append((kind, time.perf_counter() - started, ok))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for kind in ("recommend", "respond"):                           # warm-up, not counted
            await client.post(f"{url}/{kind}", json={"turns": DIALOGUES[0]})
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started

    def stats(rows):
        ms = [r[1] * 1000 for r in rows]
        return {"requests": len(rows), "errors": sum(not r[2] for r in rows),
                "p50_ms": round(percentile(ms, 0.5), 1), "p95_ms": round(percentile(ms, 0.95), 1),
                "p99_ms": round(percentile(ms, 0.99), 1), "max_ms": round(max(ms), 1) if ms else None}

    result = {"seconds": round(elapsed, 2), "requests_per_s": round(len(records) / elapsed, 2), **stats(records)}
    result["by_endpoint"] = {kind: stats([r for r in records if r[0] == kind])
                             for kind in sorted({r[0] for r in records})}
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", default=None, help="run or checkpoint folder (default runs/tiny, "
                                                            "else a random tiny model)")
    p.add_argument("--url", help="load-test this running server instead of starting one")
    p.add_argument("--catalog", help="passed to pecrs serve --catalog")
    p.add_argument("--threads", type=int, help="passed to pecrs serve --threads")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--duration", type=float, default=60, help="stop sending after this many seconds")
    p.add_argument("--endpoint", choices=("recommend", "respond", "mixed"), default="mixed")
    p.add_argument("--startup-timeout", type=float, default=300)
    args = p.parse_args(argv)
    clients = max(1, min(args.clients, MAX_CLIENTS))
    total = max(1, min(args.requests, MAX_REQUESTS))
    duration = max(1.0, min(args.duration, MAX_DURATION))

    proc = log = None
    tmp = None
    run_dir = args.run_dir
    if not args.url:
        if run_dir is None:
            run_dir = str(REPO / "runs" / "tiny")
            if not (Path(run_dir) / "best").is_dir():
                tmp = tempfile.TemporaryDirectory()
                run_dir = str(tiny_run(Path(tmp.name)))
        started = time.perf_counter()
        proc, url, log = start_server(run_dir, free_port(), args.catalog, args.threads, args.startup_timeout)
        startup = time.perf_counter() - started
    else:
        url, startup = args.url.rstrip("/"), None
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        result = asyncio.run(load(url, clients, total, duration, args.endpoint))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        if tmp is not None:
            tmp.cleanup()
    result = {"server": url, "run_dir": run_dir, "items": health.get("items"), "device": health.get("device"),
              "clients": clients, "endpoint": args.endpoint, "threads": args.threads,
              "server_startup_s": startup and round(startup, 1), "cpus": os.cpu_count(),
              "load_average": os.getloadavg()[0], **result}
    print(json.dumps(result))
    print(f"load {args.endpoint}: {result['requests']} requests from {clients} clients in {result['seconds']} s -> "
          f"{result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"{result['errors']} errors ({result['items']} items, {result['device']})")
    return result


if __name__ == "__main__":
    main()
