#!/usr/bin/env bash
# One or more parts of a paper experiment (`pecrs experiment`, docs/results.md) on a GPU machine,
# packaged as tools/gpu/inspired.sh does. Prepared here, run there:
#   .gguf/   the SmolLM2 GGUF in two parts (python tools/split_gguf.py split), one part per call
#   .whl/    wheels the GPU image lacks (gguf, rouge-score, nltk, defusedxml)
#   .devdata/inspired/   items.jsonl + train/dev/test.jsonl (../shared does not travel)
#   .devdata/redial/     main and table9_10 only: items.jsonl, items_sources.jsonl and
#                        official/{train_subset_data,test_data}.jsonl; make it here with
#                        `bash tools/gpu/experiment.sh --prepare-redial` (about 12 MB)
# Usage:
#   bash tools/gpu/experiment.sh NAME [PARTS] [extra pecrs-experiment arguments or overrides...]
#     NAME   main | table5 | table6 | table7 | table8 | table9_10 | fig3 | fig4 (or table2/table3)
#     PARTS  comma-separated part names or globs, e.g. inspired-train or 'test-*' (default or "all": every part)
#   env: MINUTES     train.max_train_minutes of a training part (default 7; a part that stops there is
#                    resumed by the next call on the same warm machine)
#        CONFIG      default configs/inspired.yaml (configs/redial.yaml for the paper's ReDial tables)
#        DATA, DATA_REDIAL   default .devdata/inspired, .devdata/redial
#        EXP_DIR     default runs/experiments: ignored by git, so trained runs stay on the warm machine
#                    between calls. Do not name it in `carry`: that would replace it with this copy.
#        ACCEPT_PARTIAL=1    evaluate models whose training stopped at MINUTES (marked as such)
#        OUT         where results are copied (the device tool's $OUT)
# Writes to $OUT (5 files at most): NAME/result.json, NAME/table.md, NAME/<figure>.png, device.txt,
# experiment.log. Merge them here with `pecrs experiment NAME ... --merge FILES_AT/NAME/result.json --list`.
set -euo pipefail
if [ "${1:-}" = "--prepare-redial" ]; then
  SRC=${SRC:-../shared/datasets/redial}
  DST=${DATA_REDIAL:-.devdata/redial}
  mkdir -p "$DST/official"
  cp "$SRC/items.jsonl" "$SRC/items_sources.jsonl" "$DST/"
  cp "$SRC/official/train_subset_data.jsonl" "$SRC/official/test_data.jsonl" "$DST/official/"
  du -sh "$DST"
  exit 0
fi
NAME=${1:?usage: bash tools/gpu/experiment.sh NAME [PARTS] [args...]}
PARTS=${2:-all}
shift $(( $# >= 2 ? 2 : 1 ))
source tools/gpu/env.sh
CONFIG=${CONFIG:-configs/inspired.yaml}
DATA=${DATA:-.devdata/inspired}
DATA_REDIAL=${DATA_REDIAL:-.devdata/redial}
EXP_DIR=${EXP_DIR:-runs/experiments}
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo cpu) | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/device.txt"
args=(experiment "$NAME" --config "$CONFIG" --output-dir "$EXP_DIR" --quiet
      "inspired:train.dataset=$DATA" "redial:train.dataset=$DATA_REDIAL"
      "train.max_train_minutes=${MINUTES:-7}" inference.batch_size=32)
[ "$PARTS" = "all" ] || args+=(--parts "$PARTS")
[ -z "${ACCEPT_PARTIAL:-}" ] || args+=(--accept-partial)
status=0
python3 -m pecrs.cli "${args[@]}" "$@" 2>&1 | { grep --line-buffered -v Warning || true; } | tee "$OUT/experiment.log" || status=$?
# result files of the experiment (an alias such as table2 writes under main/)
folder=$(python3 -c "import sys; from pecrs.experiments import ALIASES; n=sys.argv[1]; print(ALIASES.get(n, n))" "$NAME")
if [ -d "$EXP_DIR/$folder" ]; then
  mkdir -p "$OUT/$folder"
  cp "$EXP_DIR/$folder/result.json" "$EXP_DIR/$folder/table.md" "$OUT/$folder/" 2>/dev/null || true
  for png in "$EXP_DIR/$folder"/*.png; do [ -f "$png" ] && cp "$png" "$OUT/$folder/"; done
fi
exit $status
