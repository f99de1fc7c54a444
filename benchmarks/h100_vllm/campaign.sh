#!/bin/bash
# Read-only vLLM 0.24 campaign on the shared H100: for each max_num_seqs, start `vllm serve`
# (dummy 8B-shaped Llama from shared/vllm-h100/mk_model.py) with `jouletune exporter` beside it
# and an independent NVML energy log, then run `jouletune bench` for each workload, closed loop
# with as many clients as max_num_seqs. Never changes a GPU setting.
# Resumable: points already in $RES are skipped, so a later run on the same warm machine goes on.
# Usage: campaign.sh "1 8 32" DEADLINE_UNIX_S     (stops starting servers near the deadline)
# VLLM_ARGS and BENCH_ARGS add flags to every server and bench (e.g. vLLM's iteration log and
# the bench's per-request detail); RES is where results go; MODEL the model directory.
set -u
SEQS=$1; DEADLINE=$2
RES=${RES:-/tmp/campaign}; mkdir -p "$RES"
export PYTHONPATH=$PWD/src:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
JT="python3 -m jouletune"
WORKLOADS=${WORKLOADS:-"512:256 1024:128"}  # input:output[:seed] (seed 1 by default)
DUR=${DUR:-20}
MODEL=${MODEL:-/tmp/model}

stop_all() {
  for f in /tmp/vllm.pid /tmp/exporter.pid /tmp/nvlog.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; done
  for _ in $(seq 60); do
    python3 -c "import socket; s=socket.socket(); s.settimeout(0.2); exit(0 if s.connect_ex(('127.0.0.1',8000)) else 1)" && break
    sleep 1; done
  # The engine core frees GPU memory after the API server exits: wait for it.
  for _ in $(seq 60); do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
    [ "${used:-0}" -lt 4000 ] && break; sleep 1; done
}

for N in $SEQS; do
  todo=0; for W in $WORKLOADS; do IFS=: read -r IN OUTL _ <<< "$W"
    [ -f "$RES/n${N}_w${IN}-${OUTL}.json" ] || todo=1; done
  [ $todo = 1 ] || continue
  now=$(date +%s); [ $((DEADLINE - now)) -lt 200 ] && { echo "campaign: deadline near, stop before N=$N"; break; }
  stop_all
  echo "campaign: starting vllm max_num_seqs=$N at $(date +%T)"
  setsid python3 -m vllm.entrypoints.cli.main serve "$MODEL" --load-format dummy \
    --max-num-seqs "$N" --max-model-len 2048 --port 8000 ${VLLM_ARGS:-} > "$RES/vllm_n$N.log" 2>&1 < /dev/null &
  echo $! > /tmp/vllm.pid
  setsid $JT exporter --port 9400 --gpus 0 > "$RES/exporter.log" 2>&1 < /dev/null & echo $! > /tmp/exporter.pid
  setsid python3 benchmarks/h100_vllm/nvml_energy_log.py "$RES/nvml_n$N.csv" 0 > /dev/null 2>&1 < /dev/null &
  echo $! > /tmp/nvlog.pid
  t0=$(date +%s)
  until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)" 2>/dev/null; do
    sleep 2; kill -0 "$(cat /tmp/vllm.pid)" 2>/dev/null || { echo "campaign: vllm died"; tail -20 "$RES/vllm_n$N.log"; break; }
    [ $(( $(date +%s) - t0 )) -gt 400 ] && { echo "campaign: vllm not healthy in 400 s"; break; }
  done
  echo "campaign: healthy after $(( $(date +%s) - t0 )) s"
  for W in $WORKLOADS; do
    IFS=: read -r IN OUTL SEED <<< "$W"; SEED=${SEED:-1}; F="$RES/n${N}_w${IN}-${OUTL}.json"
    [ -f "$F" ] && continue
    $JT bench --base-url http://127.0.0.1:8000 --exporter-url http://127.0.0.1:9400 \
      --random-input-len "$IN" --random-output-len "$OUTL" --max-concurrency "$N" \
      --num-prompts 100000 --duration "$DUR" --seed "$SEED" --no-progress ${BENCH_ARGS:-} \
      --result-filename "$F.tmp" > "$RES/bench_n${N}_w${IN}-${OUTL}.txt" 2>&1
    echo "campaign: N=$N W=$W exit $? at $(date +%T)"; tail -4 "$RES/bench_n${N}_w${IN}-${OUTL}.txt"
    [ -f "$F.tmp" ] && mv "$F.tmp" "$F"
  done
done
# Versions for every figure.
{ nvidia-smi --query-gpu=name,driver_version,power.limit,power.default_limit --format=csv,noheader
  python3 -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('vllm', vllm.__version__)"
} > "$RES/versions.txt" 2>&1
