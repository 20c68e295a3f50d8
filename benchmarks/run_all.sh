#!/usr/bin/env bash
# Run the CPU benchmarks below in turn (ann.py, load_test.py and the bf16 / profiling scripts run
# on their own: benchmarks/README.md); JSON results go to $RESULTS (default benchmarks/results/), the
# one-line summaries to stdout. Pass --quick for a smoke run (minutes instead of about an hour).
# Check `uptime` first: on a shared machine, figures taken with a load average above ~1.5 are noise.
#   bash benchmarks/run_all.sh [--quick]
# gpu_epoch.py needs a GPU machine: bash benchmarks/gpu_epoch.sh (see docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run() {  # result name, script, args...
  local name=$1 script=$2; shift 2
  python benchmarks/$script.py "$@" --json-out "$RESULTS/$name.json" 2>"$RESULTS/$name.log" | grep '^SUMMARY' \
    || { echo "$name failed, see $RESULTS/$name.log"; return 1; }
}
status=0
run matmul_peak matmul_peak "$@" || status=1
run train_step train_step "$@" || status=1
run train_step_tiny_llama train_step --backbone tiny-llama "$@" || status=1
run train_throughput train_throughput --plain "$@" || status=1
run train_throughput_max_length train_throughput --synthetic --plain "$@" || status=1
run latency latency "$@" || status=1
run latency_int8 latency --int8 "$@" || status=1
run catalog_encoding catalog_encoding "$@" || status=1
run item_encoding item_encoding "$@" || status=1
run generation generation "$@" || status=1
run first_recommendation first_recommendation "$@" || status=1
run evaluation_batches evaluation_batches "$@" || status=1
run beam_prefill beam_prefill "$@" || status=1
run title_linking title_linking "$@" || status=1
run recall_probe recall_probe --features "$RESULTS/recall_probe_features.pt" "$@" || status=1
run item_token_probe item_token_probe --train-steps 60 "$@" || status=1
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
