#!/bin/bash
# The real tune of benchmarks/h100_vllm/tune.yaml, then the exhaustive grid over the same
# max_num_seqs values (the same file with `sampler: grid`), on the H100 machine, read-only.
# Needs vLLM staged as shared/vllm-h100/README.md says (/tmp/site, /tmp/model) and Optuna and
# matplotlib wheels in /tmp/site2. Both studies resume from their study.db, so a rerun on a
# warm machine goes on where the last one stopped.
# Usage: run_tune.sh [OUT_DIR]   (runs from a private copy of src/: the checkout may change)
set -u
OUT=${1:-/tmp/h100-tune}; mkdir -p "$OUT"
rm -rf /tmp/jt && mkdir -p /tmp/jt && cp -r src benchmarks/h100_vllm/tune.yaml /tmp/jt/
export PYTHONPATH=/tmp/jt/src:/tmp/site:/tmp/site2 VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
export JOULETUNE_VLLM_CMD="${JOULETUNE_VLLM_CMD:-python3 -m vllm.entrypoints.cli.main serve}"
cd /tmp/jt
# The grid: the same spec with `sampler: grid` and a budget of one trial per value.
values=$(grep -o 'maxNumSeqs: \[[^]]*\]' tune.yaml | tr -cd ',' | wc -c)
sed -e 's/name: h100-vllm-tune/name: h100-vllm-grid/' -e 's/^  backend: vllm$/&\n  sampler: grid/' \
  -e "s/maxTrials: [0-9]*/maxTrials: $((values + 1))/" tune.yaml > grid.yaml
grep -q '^  sampler: grid$' grid.yaml || { echo "run_tune: could not make grid.yaml" >&2; exit 2; }
for study in tune grid; do
  echo "run_tune: $study starts at $(date +%T)"
  python3 -m jouletune tune "$study.yaml" --backend local --out "$OUT/$study"
  code=$?
  echo "run_tune: $study exit $code at $(date +%T)"
  echo "$study $code" >> "$OUT/exit_codes"
done
{ nvidia-smi --query-gpu=name,driver_version,power.limit,power.default_limit --format=csv,noheader
  python3 -c "import torch, vllm, optuna; print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('vllm', vllm.__version__); print('optuna', optuna.__version__)"
} > "$OUT/versions.txt" 2>&1
touch "$OUT/done"
