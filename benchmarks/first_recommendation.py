"""Seconds from process start to the first recommendation and reply of a shipped model, CPU (issue 11 C).

    python benchmarks/first_recommendation.py [--model inspired] [--cold-backbone] [--repeats 3]

Each repeat starts a fresh Python process that imports pecrs, loads the model with
`Recommender.from_pretrained(MODEL)` (backbone, adapter, heads, the catalog's shipped item vectors),
recommends for a two-turn dialogue, then writes the reply. The wall clock runs from just before the
process is spawned to the moment it prints the recommendation (and, separately, the reply), so
interpreter start-up and imports count. The child also reports its phases (import, load,
recommend, reply) and whether the catalog vectors were loaded rather than encoded.

--cold-backbone: the first run ever on a machine, with an empty backbone cache (a temporary
PECRS_CACHE), so the GGUF is dequantised and converted first (~18 s on a 2-core CPU); by default the
cache (~/.cache/pecrs) is warm, as on every start after the first. Target: first recommendation
<= 30 s after process start on a CPU (warm cache).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import _common as C

TARGET_S = 30.0
DIALOGUE = [{"role": "seeker", "text": "Hi! I loved The Dark Knight and Inception. Any other thrillers like them?"}]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from pecrs.recommender import Recommender
t_import = time.perf_counter()
rec = Recommender.from_pretrained(sys.argv[1], device="cpu")
t_load = time.perf_counter()
dialogue = json.loads(sys.argv[3])
top = rec.recommend(dialogue, k=5)
t_rec = time.perf_counter()
print("RECOMMENDED " + json.dumps([r.item.display() for r in top]), flush=True)
reply = rec.respond(dialogue, seed=0)
t_reply = time.perf_counter()
print("REPLIED " + json.dumps({"reply": reply.text, "import_s": t_import - t0, "load_s": t_load - t_import,
      "recommend_s": t_rec - t_load, "reply_s": t_reply - t_rec,
      "vectors_from_cache": bool(rec.report.vectors_from_cache), "items": len(rec)}), flush=True)
"""


def one_start(model: str, threads: int, env: dict) -> dict:
    """Spawn one process; wall seconds until it prints the recommendation, then the reply."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, model, str(threads), json.dumps(DIALOGUE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    result = {}
    for line in proc.stdout:
        if line.startswith("RECOMMENDED "):
            result["first_recommendation_s"] = round(time.perf_counter() - start, 2)
            result["recommended"] = json.loads(line[len("RECOMMENDED "):])
        elif line.startswith("REPLIED "):
            result["first_reply_s"] = round(time.perf_counter() - start, 2)
            result.update({k: (round(v, 2) if isinstance(v, float) else v)
                           for k, v in json.loads(line[len("REPLIED "):]).items()})
    err = proc.stderr.read()
    if proc.wait() != 0 or "first_reply_s" not in result:
        raise SystemExit(f"the child process failed (rc {proc.returncode}):\n{err[-3000:]}")
    return result


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="inspired", help="a shipped model's name or a model folder (default inspired)")
    p.add_argument("--repeats", type=int, default=None, help="process starts (default 3, quick 1)")
    p.add_argument("--cold-backbone", action="store_true", help="empty backbone cache: include the GGUF conversion")
    args = p.parse_args(argv)
    threads = C.set_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs = []
    with tempfile.TemporaryDirectory() as empty_cache:
        for _ in range(repeats):
            if args.cold_backbone:
                env["PECRS_CACHE"] = tempfile.mkdtemp(dir=empty_cache)  # a new empty cache for each start
            runs.append(one_start(args.model, threads, env))
    first = C.summarize([r["first_recommendation_s"] for r in runs])
    result = {"model": args.model, "cold_backbone": args.cold_backbone, "threads": threads,
              "first_recommendation_s": first, "first_reply_s": C.summarize([r["first_reply_s"] for r in runs]),
              "target_s": TARGET_S, "runs": runs}
    C.emit(args, result, f"first recommendation {first['median']:.1f} s after process start "
                         f"(median of {repeats}, {'cold' if args.cold_backbone else 'warm'} backbone cache; "
                         f"target <= {TARGET_S:.0f} s), reply at {result['first_reply_s']['median']:.1f} s, "
                         f"{C.cpu_model()}")


if __name__ == "__main__":
    main()
