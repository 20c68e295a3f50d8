#!/usr/bin/env bash
# The interim shipped model, reproduced on a CPU (about two hours on 2 cores): train
# configs/inspired-cpu.yaml, evaluate its recall on INSPIRED's test split (recall, dedup recall;
# no perplexity: its teacher-forced pass over all 993 test responses is the longest part on 2 cores),
# export it with its card (tools/cpu/model_notes.md quoted under "About this model") and copy it
# to pecrs/models/inspired, the default model. The GPU run (docs/gpu.md) replaces it.
#   bash tools/cpu/train_inspired.sh [RUN_DIR]      (default runs/cpu-inspired; resumes if rerun)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/cpu-inspired}
pecrs train configs/inspired-cpu.yaml --output-dir "$RUN" train.max_train_minutes=100
pecrs evaluate "$RUN" --no-generate --no-ppl --json --device cpu
pecrs export "$RUN" "$RUN/inspired" --notes tools/cpu/model_notes.md --device cpu
rm -rf pecrs/models/inspired && mkdir -p pecrs/models && cp -r "$RUN/inspired" pecrs/models/inspired
python benchmarks/first_recommendation.py --repeats 1
