#!/usr/bin/env bash
# GPU training-speed benchmark (benchmarks/gpu_epoch.py) with the packaging of tools/gpu/inspired.sh:
#   .gguf/   the SmolLM2 GGUF in two parts (python tools/split_gguf.py split), one part per call
#   .whl/    wheels the GPU image lacks (gguf, rouge-score, nltk, defusedxml)
#   .devdata/inspired/   items.jsonl + train/dev/test.jsonl (../shared does not travel)
# Usage: bash benchmarks/gpu_epoch.sh [gpu_epoch.py options]; env OUT (results), DATA.
# Default: batch 2 (the paper's) timed over 200 steps, then one full epoch (capped at 150 s and
# extrapolated), one dev evaluation, and timings at batch 8 and 32 for comparison (200 steps each).
set -euo pipefail
source tools/gpu/env.sh
DATA=${DATA:-.devdata/inspired}
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo cpu) | tee "$OUT/device.txt"
if [ "$#" -eq 0 ]; then
  set -- --full-epoch --max-epoch-seconds 150 --batch-sizes 2 8 32
fi
python3 benchmarks/gpu_epoch.py --data "$DATA" "$@" 2>&1 | { grep --line-buffered -v Warning || true; } | tee "$OUT/gpu_epoch.log"
