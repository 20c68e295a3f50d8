"""How fast `pecrs.title_linking.TitleLinker` builds and links, and what it links on real dialogues.

    python benchmarks/title_linking.py                 # 10^5 synthetic titles + the INSPIRED catalog
    python benchmarks/title_linking.py --items 1000000

Build: one pass over a synthetic catalog of `--items` titles (1-8 words from a 510-word vocabulary,
so titles share first words and the longest-first scan has work to do). Link: a 36-word chat line
full of catalog words, the best of `--repeats` calls, in microseconds per word. On INSPIRED's test
dialogues (their movies are already [ITEM]s, so a link there is a title the annotators left
unmarked or a false one) it counts the links and prints the most frequent, to read by eye.
"""
from __future__ import annotations

import collections
import json
import random
import time

from _common import DATASETS, emit, parser

from pecrs.data import Item
from pecrs.title_linking import TitleLinker

LINE = ("I love the dark night of the game and i like a movie of the night, "
        "what would you say I Love The Dark Night Of The Game and then a movie like The Night Game?")


def synthetic_items(n: int, seed: int = 0) -> list[Item]:
    rng = random.Random(seed)
    vocab = ["the", "i", "love", "night", "game", "dark", "movie", "like", "a", "of"] + [f"w{k}" for k in range(500)]
    return [Item(str(k), " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))).title(), 2000 + k % 20)
            for k in range(n)]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    n = 2_000 if args.quick else args.items
    items = synthetic_items(n)
    started = time.perf_counter()
    linker = TitleLinker(items)
    build_s = time.perf_counter() - started
    best = min(_timed(linker.link, LINE) for _ in range(3 if args.quick else args.repeats))
    words = len(LINE.split())
    result = {"synthetic": {"items": n, "build_s": round(build_s, 3), "build_us_per_item": round(1e6 * build_s / n, 2),
                            "line_words": words, "link_us_per_word": round(1e6 * best / words, 2),
                            "links_in_line": len(linker.matches(LINE))}}
    inspired = DATASETS / "inspired"
    if (inspired / "items.jsonl").is_file():
        from pecrs.loaders import load_items

        real = TitleLinker(list(load_items(inspired / "items.jsonl").values()))
        counts, turns, seeker_links = collections.Counter(), 0, 0
        for line in (inspired / "test.jsonl").read_text(encoding="utf-8").splitlines():
            for turn in json.loads(line)["turns"]:
                turns += 1
                found = real.matches(turn["text"])
                counts.update(turn["text"][s:e] for s, e, _ in found)
                seeker_links += len(found) if turn["role"] == "seeker" else 0
        result["inspired_test"] = {"turns": turns, "links": sum(counts.values()), "seeker_links": seeker_links,
                                   "most_linked": counts.most_common(15)}
    summary = (f"build {result['synthetic']['build_us_per_item']} us/item over {n:,} titles, "
               f"link {result['synthetic']['link_us_per_word']} us/word")
    if "inspired_test" in result:
        summary += f"; INSPIRED test: {result['inspired_test']['links']} links in {result['inspired_test']['turns']} turns"
    emit(args, result, summary)


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
