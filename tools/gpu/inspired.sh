#!/usr/bin/env bash
# One real INSPIRED run of the default backbone on a GPU machine: train within a time budget,
# keep the best dev checkpoint, evaluate on test. Prepared here, run there (docs/gpu.md):
#   .gguf/   the SmolLM2 GGUF in two parts (python tools/split_gguf.py split), one part per call
#   .whl/    wheels the GPU image lacks (gguf, rouge-score, nltk, defusedxml)
#   .devdata/inspired/   items.jsonl + train/dev/test.jsonl (../shared does not travel)
# Usage: bash tools/gpu/inspired.sh [train overrides...]; env MINUTES (training budget), OUT.
set -euo pipefail
source tools/gpu/env.sh
RUN=${RUN:-/tmp/pecrs-run}
DATA=${DATA:-.devdata/inspired}
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo cpu) | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
python3 -m pecrs.cli train configs/inspired.yaml train.dataset=$DATA train.max_train_minutes=${MINUTES:-5} \
  inference.batch_size=32 "$@" --output-dir "$RUN" --quiet 2>&1 | grep --line-buffered -v Warning | tee "$OUT/train.log"
cp "$RUN/metrics.jsonl" "$OUT/"
ckpt=$RUN/best
[ -d "$ckpt" ] || ckpt=$RUN/last
python3 -m pecrs.cli evaluate "$ckpt" --json --batch-size 32 --output "$OUT/eval_test.json" 2>&1 \
  | grep --line-buffered -v Warning | tee "$OUT/eval.log"
