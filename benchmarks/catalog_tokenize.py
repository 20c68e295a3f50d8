"""Tokenizing a large catalog (`pecrs.catalog.tokenize_items`): seconds and peak memory, the whole
catalog in one tokenizer call against chunks of TOKENIZE_CHUNK items.

    python benchmarks/catalog_tokenize.py                 # 10^5 synthetic items, SmolLM2's tokenizer
    python benchmarks/catalog_tokenize.py --items 20000

Each way runs in its own process, so its peak resident memory (VmHWM) is its own; the figure is
that peak minus the resident memory just before tokenizing (the tokenizer loaded). Items are
synthetic films: a title, three actors, a director, two genres and a 20-60 word plot (~550
characters, ~200 SmolLM2 tokens, so most lose tokens at item_max_tokens 128). Both ways must give
the same ids (checked by hash).
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time

from _common import emit, parser

WORDS = ("a young detective returns to the city where her brother vanished and finds that the river "
         "keeps secrets older than the town itself while a storm gathers over the hills").split()


def synthetic_items(n: int, seed: int = 0):
    from pecrs.data import Item

    rng = random.Random(seed)
    return [Item(str(k), f"Film {k}", 1950 + k % 70, tuple(f"Actor {rng.randrange(5000)}" for _ in range(3)),
                 (f"Director {rng.randrange(900)}",), ("Drama", "Thriller"),
                 " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + ".")
            for k in range(n)]


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(n: int, chunk: int | None, backbone: str) -> None:
    """One way, in this process: prints {"seconds", "peak_mb_over_start", "sha1"}."""
    from pecrs.backbone import add_special_tokens, load_backbone
    from pecrs.catalog import tokenize_items

    lm, tokenizer = load_backbone(backbone)
    add_special_tokens(lm, tokenizer)
    del lm
    items = synthetic_items(n)
    before = _rss_kb("VmRSS")
    started = time.perf_counter()
    ids, mask = tokenize_items(items, tokenizer, ("title", "actors", "directors", "genres", "plot"), 128,
                               chunk=chunk or max(n, 1))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": round(seconds, 2), "peak_mb_over_start": round((_rss_kb("VmHWM") - before) / 1024),
                      "shape": list(ids.shape), "sha1": hashlib.sha1(ids.numpy().tobytes()).hexdigest()[:16]}))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--backbone", default="smollm2-135m-instruct")
    p.add_argument("--child", nargs=2, help=argparse_hidden())
    args = p.parse_args()
    if args.child:
        child(args.items, int(args.child[0]) or None, args.child[1])
        return
    from pecrs.catalog import TOKENIZE_CHUNK

    n = 2_000 if args.quick else args.items
    backbone = "tiny-llama" if args.quick else args.backbone
    ways = {}
    for name, chunk in (("whole catalog at once", 0), (f"chunks of {TOKENIZE_CHUNK}", TOKENIZE_CHUNK)):
        done = subprocess.run([sys.executable, __file__, "--items", str(n), "--child", str(chunk), backbone],
                              capture_output=True, text=True, check=True)
        ways[name] = json.loads(done.stdout.strip().splitlines()[-1])
    same = len({w["sha1"] for w in ways.values()}) == 1
    whole, chunked = ways.values()
    emit(args, {"items": n, "backbone": backbone, "ways": ways, "same_ids": same},
         f"{n:,} items: whole {whole['seconds']} s +{whole['peak_mb_over_start']} MB, chunked "
         f"{chunked['seconds']} s +{chunked['peak_mb_over_start']} MB, same ids {same}")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
