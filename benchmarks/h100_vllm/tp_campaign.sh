#!/bin/bash
# Issue #16 on two H100s (kind nvidia-h100-x2), read-only: the dummy 8B-shaped model at TP 1
# and TP 2, and a 32B-class dense shape (Qwen3-32B's config.json fields, the word-level
# tokenizer of mk_model.py) at TP 2, each at four concurrencies; `jouletune exporter --gpus`
# on exactly the engine's GPUs, and an independent NVML energy log per GPU. Then
# `python benchmarks/h100_vllm/check_energy.py DIR` compares the exporter's summed window
# energy with the per-GPU logs. Needs vLLM staged (/tmp/site). Not yet run: no two-GPU machine
# has been lent (see the README). Usage: tp_campaign.sh OUT_DIR
set -u
OUT=$1; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
JT="python3 -m jouletune"
[ -f /tmp/model/config.json ] || python3 .device-whl/mk_model.py /tmp/model
# The 32B shape: Qwen3-32B's architecture fields, mk_model's tokenizer files.
mkdir -p /tmp/model32 && cp /tmp/model/tokenizer* /tmp/model/special_tokens_map.json \
  /tmp/model/generation_config.json /tmp/model32/
python3 - <<'PY'
import json
c = json.load(open("tests/models/configs/qwen3-32b.json"))
c.update(vocab_size=128256, bos_token_id=0, eos_token_id=1, max_position_embeddings=8192)
json.dump(c, open("/tmp/model32/config.json", "w"), indent=1)
PY
run_server() {  # run_server NAME MODEL TP
  local name=$1 model=$2 tp=$3 gpus; gpus=$(seq -s, 0 $((tp - 1)))
  CUDA_VISIBLE_DEVICES=$gpus setsid python3 -m vllm.entrypoints.cli.main serve "$model" \
    --load-format dummy --tensor-parallel-size "$tp" --max-num-seqs 256 --max-model-len 2048 \
    --port 8000 > "$OUT/vllm_$name.log" 2>&1 < /dev/null &
  echo $! > /tmp/vllm.pid
  setsid $JT exporter --port 9400 --gpus "$gpus" > "$OUT/exporter_$name.log" 2>&1 < /dev/null &
  echo $! > /tmp/exporter.pid
  for g in $(seq 0 $((tp - 1))); do
    setsid python3 benchmarks/h100_vllm/nvml_energy_log.py "$OUT/nvml_${name}_gpu$g.csv" "$g" \
      > /dev/null 2>&1 < /dev/null & echo $! >> /tmp/nvlog.pids
  done
  local t0; t0=$(date +%s)
  until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)" 2>/dev/null; do
    sleep 2; [ $(( $(date +%s) - t0 )) -gt 500 ] && { echo "$name: not healthy"; return 1; }
  done
  for C in 1 16 64 256; do
    $JT bench --base-url http://127.0.0.1:8000 --exporter-url http://127.0.0.1:9400 \
      --server-max-num-seqs 256 --random-input-len 512 --random-output-len 256 \
      --max-concurrency "$C" --num-prompts 100000 --duration 25 --seed 31 --no-progress \
      --result-filename "$OUT/${name}_c$C.json" > "$OUT/${name}_c$C.txt" 2>&1
    echo "$name c$C exit $?"
  done
  kill "$(cat /tmp/vllm.pid)" "$(cat /tmp/exporter.pid)"; xargs kill < /tmp/nvlog.pids; rm -f /tmp/nvlog.pids
  sleep 20
}
run_server llama8b_tp1 /tmp/model 1
run_server llama8b_tp2 /tmp/model 2
run_server qwen32b_tp2 /tmp/model32 2
nvidia-smi --query-gpu=index,name,driver_version,power.limit --format=csv,noheader > "$OUT/versions.txt"
