#!/usr/bin/env bash
# The one-session GPU run of issue 11 B: land the backbone, probe the step, train INSPIRED under a
# deadline (variants, dev-selected), evaluate on test, export, all inside a 13-minute device
# window. The plan and the exact device calls: docs/gpu.md, "The INSPIRED run in one session".
#
#   here, right before the session:  bash tools/gpu/train_inspired.sh --prepare
#                  .gguf/   the SmolLM2 GGUF gzip-compressed, in two equal parts (~44 MiB each) + manifest
#                  .devdata/inspired.tar.gz   items.jsonl + train/dev/test.jsonl (3 MiB, 0.7 gzipped;
#                           env.sh unpacks every .devdata/*.tar.gz on the device)
#                  .devdata/revision.txt   git revision of this tree (.git does not travel)
#                  checks .whl/ (gguf, nltk, defusedxml, rouge_score, 1.8 MiB) and what each call sends
#                  (tools/gpu/call_sizes.py: the tree + its carried paths, < 62 of 64 MiB)
#   call 1:      bash tools/gpu/train_inspired.sh --land      carry part00, manifest, .whl  (~60 MiB)
#                (exits 1 when the wheels do not import or no GPU is seen: do not issue call 2)
#   call 2:      bash tools/gpu/train_inspired.sh             carry part01, .devdata/inspired.tar.gz,
#                                                             .devdata/revision.txt   (~59 MiB)
#                (issue it at once: the machine goes back ~30 s after call 1; if it was recycled
#                in between, call 2 says so and exits 3: rerun call 1, then call 2, docs/gpu.md)
#   salvage:     bash tools/gpu/train_inspired.sh --salvage   no carry; only after call 2 was killed
#                (rc 124/137): the best checkpoint so far (or the export) and the logs into $OUT (docs/gpu.md)
#
# Budget of the window (seconds; <= 810 s, the device budget is 15 min = 900 s):
#   machine start + call 1 (transfer ~60 MiB, install wheels)   <= 150 + 30
#   gap + call 2 transfer (~59 MiB)                             <= 30
#   call 2 (CALL_BUDGET_S)                                      <= 570
#     env + GGUF join                      ~10
#     backbone: GGUF -> cached float model ~30 (at most 120)
#     probe: setup + combinations (60) + one dev evaluation   ~90 (at most 150; PROBE_FROM skips it)
#     training: what is left after the reserves, shared by the variants   ~250
#     test evaluation (generation, else recall + PPL only)    EVAL_RESERVE_S=120
#     export                               EXPORT_RESERVE_S=30
#     dev evaluations for the ship rule    what is left over
#     result files                         END_RESERVE_S=15
#   files back + give_back                                      <= 30
#   total                                                       <= 810
# Size call 2 from call 1's reply: CALL_BUDGET_S = min(570, lease.budget_left_s - 120) and
# timeout_s = CALL_BUDGET_S + 30 (the driver ends within seconds of its budget); training absorbs
# the difference.
#
# SMOKE=1: the same flow on the CPU with configs/tiny.yaml and tiny budgets (tests/test_gpu_run.py).
# Everything else: tools/gpu/train_inspired.py's docstring.
set -uo pipefail
export PECRS_CALL_T0=${PECRS_CALL_T0:-$(date +%s.%N)}
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

if [ "${1:-}" = "--prepare" ]; then
  set -e
  python3 tools/split_gguf.py split --max-part-bytes 50000000   # gzip, then 2 parts
  SRC=${SRC:-../shared/datasets/inspired}
  mkdir -p .devdata/inspired
  install -m 644 "$SRC"/items.jsonl "$SRC"/train.jsonl "$SRC"/dev.jsonl "$SRC"/test.jsonl .devdata/inspired/
  tar -czf .devdata/inspired.tar.gz -C .devdata inspired    # what call 2 carries: 3 MiB -> 0.7
  dirty=$([ -z "$(git status --porcelain --untracked-files=no)" ] && echo false || echo true)
  echo "revision=$(git rev-parse HEAD) dirty=$dirty prepared_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)" > .devdata/revision.txt
  missing=0
  for w in gguf nltk defusedxml rouge_score; do
    n=$( (compgen -G ".whl/${w}-*.whl" || true) | wc -l)   # compgen fails on no match: set -e, pipefail
    [ "$n" = 1 ] || { echo "wheel $w: $n files in .whl (exactly one needed: pip refuses two versions)"; missing=1; }
  done
  if [ $missing != 0 ]; then  # sized without them, a call would look smaller than it is
    echo "fetch them (docs/gpu.md section 1): pip download --no-deps -d .whl gguf==0.19.0 nltk==3.10.4 defusedxml==0.7.1 && pip wheel --no-deps -w .whl rouge_score==0.1.2"
    exit 1
  fi
  python3 tools/gpu/call_sizes.py
  exit $?
fi

source tools/gpu/env.sh

if [ "${1:-}" = "--land" ]; then   # exits 1 when call 2 could not run: no wheels, or no GPU (unless SMOKE)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU (nvidia-smi)"
  ls -la .gguf
  python3 -c "import gguf, nltk, rouge_score, defusedxml; print('wheels ok')" || { echo "LAND FAILED: the wheels do not import"; exit 1; }
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())" || { echo "LAND FAILED: torch and its libraries do not import"; exit 1; }
  if [ -z "${SMOKE:-}" ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "LAND FAILED: torch sees no GPU"; exit 1
  fi
  exit 0
fi

if [ "${1:-}" = "--salvage" ]; then
  python3 tools/gpu/train_inspired.py --salvage
  exit $?
fi

if [ -z "${SMOKE:-}" ] && [ ! -f ".gguf/$GGUF_NAME" ]; then
  python3 tools/split_gguf.py join || { echo "GGUF join failed: is part01 here? (ls .gguf)"; ls -la .gguf; exit 1; }
fi
[ -f .devdata/revision.txt ] && cat .devdata/revision.txt
python3 tools/gpu/train_inspired.py "$@"
