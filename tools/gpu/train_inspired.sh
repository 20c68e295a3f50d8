#!/usr/bin/env bash
# The one-session GPU run of issue 11 B: land the backbone, probe the step, train INSPIRED under a
# deadline (variants, dev-selected), evaluate on test, export, all inside a 13-minute device
# window. The plan and the exact device calls: docs/gpu.md, "The INSPIRED run in one session".
#
#   here, once:  bash tools/gpu/train_inspired.sh --prepare
#                  .gguf/   the SmolLM2 GGUF in two equal parts (~47 MiB each) + manifest
#                  .devdata/inspired/   items.jsonl + train/dev/test.jsonl (3 MiB)
#                  .devdata/revision.txt   git revision of this tree (.git does not travel)
#                  checks .whl/ (gguf, nltk, defusedxml, rouge_score) and each call's size (< 64 MiB)
#   call 1:      bash tools/gpu/train_inspired.sh --land      carry part00, manifest, .whl, .devdata
#   call 2:      bash tools/gpu/train_inspired.sh             carry part01 (issue it at once: the
#                                                             machine goes back ~30 s after call 1)
#
# Budget of the window (seconds; 13 min = 780 s, the device budget is 15 min = 900 s):
#   machine start + call 1 (transfer ~55 MiB, install wheels)   <= 150 + 30
#   gap + call 2 transfer (~48 MiB)                             <= 30
#   call 2 (CALL_BUDGET_S)                                      <= 540
#     env + GGUF join                      ~10
#     backbone: GGUF -> cached float model ~30 (at most 120)
#     probe: setup + combinations (60) + one dev evaluation   ~90 (at most 150)
#     training: what is left after the reserves, shared by the variants   ~250
#     test evaluation (generation, else recall + PPL only)    EVAL_RESERVE_S=120
#     export                               EXPORT_RESERVE_S=30
#     result files                         END_RESERVE_S=15
#   files back + give_back                                      <= 30
#   total                                                       <= 780
# When call 1's reply shows the machine held longer than 180 s (lease.held_s), shorten call 2:
# CALL_BUDGET_S = 540 - (held_s - 180); training absorbs the difference.
#
# SMOKE=1: the same flow on the CPU with configs/tiny.yaml and tiny budgets (tests/test_gpu_run.py).
# Everything else: tools/gpu/train_inspired.py's docstring.
set -uo pipefail
export PECRS_CALL_T0=${PECRS_CALL_T0:-$(date +%s.%N)}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = "--prepare" ]; then
  set -e
  python3 tools/split_gguf.py split --max-part-bytes 50000000
  SRC=${SRC:-../shared/datasets/inspired}
  mkdir -p .devdata/inspired
  install -m 644 "$SRC"/items.jsonl "$SRC"/train.jsonl "$SRC"/dev.jsonl "$SRC"/test.jsonl .devdata/inspired/
  dirty=$([ -z "$(git status --porcelain --untracked-files=no)" ] && echo false || echo true)
  echo "revision=$(git rev-parse HEAD) dirty=$dirty prepared_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)" > .devdata/revision.txt
  missing=0
  for w in gguf nltk defusedxml rouge_score; do
    compgen -G ".whl/${w}-*.whl" >/dev/null || { echo "MISSING wheel: $w"; missing=1; }
  done
  [ $missing = 0 ] || echo "fetch them (docs/gpu.md section 1): pip download --no-deps -d .whl gguf nltk defusedxml && pip wheel --no-deps -w .whl rouge_score"
  # what each call sends: the tracked and untracked-not-ignored tree, plus its carried paths
  python3 - "$GGUF_NAME" <<'PY' || exit 1
import os, subprocess, sys
from pathlib import Path
name = sys.argv[1]
def size(p):
    p = Path(p)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else (p.stat().st_size if p.exists() else 0)
tree = sum(size(f) for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                                           text=True, check=True).stdout.split("\0") if f)
c1 = tree + sum(size(p) for p in (f".gguf/{name}.part00", f".gguf/{name}.manifest.json", ".whl", ".devdata"))
c2 = tree + size(f".gguf/{name}.part01")
print(f"tree {tree / 2**20:.1f} MiB; call 1 sends {c1 / 2**20:.1f} MiB, call 2 sends {c2 / 2**20:.1f} MiB (limit 64 MiB each)")
sys.exit(0 if max(c1, c2) < 62 * 2**20 else "TOO LARGE: trim .devdata, .whl or untracked files (62 MiB leaves a margin)")
PY
  exit $missing
fi

source tools/gpu/env.sh

if [ "${1:-}" = "--land" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"
  ls -la .gguf .devdata/inspired
  python3 -c "import gguf, nltk, rouge_score, defusedxml; print('wheels ok')"
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
  exit 0
fi

if [ -z "${SMOKE:-}" ] && [ ! -f ".gguf/$GGUF_NAME" ]; then
  python3 tools/split_gguf.py join || { echo "GGUF join failed: is part01 here? (ls .gguf)"; ls -la .gguf; exit 1; }
fi
python3 tools/gpu/train_inspired.py "$@"
