# Sourced by the GPU scripts (tools/gpu/*.sh, benchmarks/gpu_epoch.sh): the environment of a run on
# the GPU machine, where only the repo and the carried, git-ignored folders arrive:
#   .gguf/   the SmolLM2 GGUF in two parts (python tools/split_gguf.py split), one part per call
#   .whl/    wheels the GPU image lacks (gguf, rouge-score, nltk, defusedxml)
#   .devdata/<dataset>.tar.gz   the dataset files (../shared does not travel), unpacked here into
#                               .devdata/<dataset>/ (a folder carried as it is works too)
OUT=${OUT:-/tmp/pecrs-out}
mkdir -p "$OUT"
export OUT PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
for packed in .devdata/*.tar.gz; do   # carried gzipped: 3 MiB of INSPIRED text is 0.7 MiB of a call
  [ -f "$packed" ] && tar -xzf "$packed" -C .devdata
done
export PECRS_SMOLLM2_GGUF=${PECRS_SMOLLM2_GGUF:-$PWD/.gguf/SmolLM2-135M-Instruct.Q4_1.gguf}
# The GGUF arrives in parts (tools/split_gguf.py): joined here once every part has landed. A later
# part without call 1's files means the machine was recycled between the calls (docs/gpu.md).
if [ ! -f "$PECRS_SMOLLM2_GGUF" ] && [ -f "$PECRS_SMOLLM2_GGUF.part01" ] \
   && { [ ! -f "$PECRS_SMOLLM2_GGUF.manifest.json" ] || [ ! -f "$PECRS_SMOLLM2_GGUF.part00" ]; }; then
  echo "call 1's files (part00, manifest, .whl) are not on this machine: it was recycled after call 1."
  echo "Rerun call 1 (--land), then this call at once with CALL_BUDGET_S from its reply (docs/gpu.md)."
  ls -la "$(dirname "$PECRS_SMOLLM2_GGUF")" 2>&1; exit 3
fi
if [ ! -f "$PECRS_SMOLLM2_GGUF" ] && [ -f "$PECRS_SMOLLM2_GGUF.manifest.json" ]; then
  python3 tools/split_gguf.py join --if-complete --dir "$(dirname "$PECRS_SMOLLM2_GGUF")" --out "$PECRS_SMOLLM2_GGUF"
fi
# .git does not travel: the revision --prepare recorded goes into the result files and the model card.
if [ -f .devdata/revision.txt ] && [ -z "${PECRS_GIT_REVISION:-}" ]; then
  rev=$(sed -n 's/.*revision=\([0-9a-f]\{7\}\)[0-9a-f]* dirty=\([a-z]*\).*/\1 \2/p' .devdata/revision.txt)
  [ -n "$rev" ] && export PECRS_GIT_REVISION="${rev% *}$([ "${rev#* }" = true ] && echo +dirty)"
fi
export PECRS_CACHE=${PECRS_CACHE:-/tmp/pecrs-cache} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg
