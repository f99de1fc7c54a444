#!/bin/bash
# The H200 run of benchmarks/h200_prediction.py's plan, read-only: one `vllm serve` of the
# dummy 8B-shaped model (shared/vllm-h100/mk_model.py) with --max-num-seqs 256
# --max-model-len 2048, `jouletune exporter` beside it, and a `jouletune bench` closed loop of C
# clients at 512/256 for each C, 25 s each. Needs vLLM staged (/tmp/site).
# Usage: h200_session.sh OUT_DIR
set -u
OUT=$1; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
JT="python3 -m jouletune"
[ -f /tmp/model/config.json ] || python3 .device-whl/mk_model.py /tmp/model
setsid python3 -m vllm.entrypoints.cli.main serve /tmp/model --load-format dummy \
  --max-num-seqs 256 --max-model-len 2048 --port 8000 > "$OUT/vllm.log" 2>&1 < /dev/null &
echo $! > /tmp/vllm.pid
setsid $JT exporter --port 9400 --gpus 0 > "$OUT/exporter.log" 2>&1 < /dev/null &
t0=$(date +%s)
until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)" 2>/dev/null; do
  sleep 2; kill -0 "$(cat /tmp/vllm.pid)" 2>/dev/null || { echo "vllm died"; tail -30 "$OUT/vllm.log"; exit 1; }
  [ $(( $(date +%s) - t0 )) -gt 400 ] && { echo "vllm not healthy in 400 s"; exit 1; }
done
echo "vllm healthy after $(( $(date +%s) - t0 )) s"
for C in 1 8 32 64 128 256; do
  $JT bench --base-url http://127.0.0.1:8000 --exporter-url http://127.0.0.1:9400 \
    --server-max-num-seqs 256 --random-input-len 512 --random-output-len 256 \
    --max-concurrency "$C" --num-prompts 100000 --duration 25 --seed 21 --no-progress \
    --result-filename "$OUT/c$C.json" > "$OUT/c$C.txt" 2>&1
  echo "c$C exit $? at $(date +%T)"; grep -E "energy per output|steady" "$OUT/c$C.txt"
done
{ nvidia-smi --query-gpu=name,driver_version,power.limit,power.default_limit,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('vllm', vllm.__version__)"
} > "$OUT/versions.txt" 2>&1
tail -40 "$OUT/vllm.log" > "$OUT/vllm_tail.log"; rm -f "$OUT/vllm.log"
