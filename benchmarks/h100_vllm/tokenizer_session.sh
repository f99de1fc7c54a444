#!/bin/bash
# Issues #12, #14 and #15 on the real H100, read-only: the dummy 8B model with a real
# 129,280-entry BPE tokenizer (DeepSeek-V3's, from the litellm wheel; retok.py), one vLLM
# server of 256 sequences, and against it the sections SECTIONS names (default: all):
#   len   `jouletune bench` at 128, 512 and 1536 prompt tokens: what vLLM counted vs asked;
#   pair  `jouletune bench` and `vllm bench serve` on one workload (512/256) at 16 and 128
#         streams, each client with its own prompt seed (a seed the other client used would
#         find its prompts in vLLM's prefix cache);
#   dcgm  `jouletune bench --energy-source dcgm` against `jouletune exporter --format dcgm`
#         (NVML in dcgm-exporter's names) with an independent NVML energy log beside it;
#   calib `jouletune calibrate --read-only`: closed loops at four batch sizes and the fit
#         (CALIB_GPU: the catalog GPU it starts from, h100-80gb by default; CALIB_WORKLOADS
#         its workloads, "512:256" by default);
#   reps  the pair at REPS_C streams REPS times for each --random-range-ratio in REPS_RANGE,
#         the two clients' order alternating (reps/): how far each client moves between runs;
#   sweep `jouletune bench` closed loops of C clients, 512/256, 25 s each, each its own prompts
#         (sweep/c{C}.json; an independent NVML log beside them, sweep/nvml.csv.gz):
#         the plan benchmarks/h200_prediction.py predicted (its `compare` reads sweep/).
# Never changes a GPU setting. Needs vLLM staged (shared/vllm-h100/README.md: /tmp/site) and
# TOKENIZER pointing at a tokenizer.json. A server already healthy on :8000 (an earlier run's,
# still warm) is reused. Usage: tokenizer_session.sh OUT_DIR
set -u
OUT=$1; mkdir -p "$OUT"
SECTIONS=${SECTIONS:-len pair dcgm calib}
TOKENIZER=${TOKENIZER:-.tools/tokenizers/deepseek-v3/tokenizer.json}
export PYTHONPATH=$PWD/src:/tmp/site VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
JT="python3 -m jouletune"
SEED=${SEED:-201}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

healthy() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)" 2>/dev/null; }
if ! healthy; then
  python3 /tmp/stage/mk_model.py /tmp/model > /dev/null 2>&1 || python3 .device-whl/mk_model.py /tmp/model
  python3 .device-whl/retok.py /tmp/model "$TOKENIZER"
  setsid python3 -m vllm.entrypoints.cli.main serve /tmp/model --load-format dummy \
    --max-num-seqs 256 --max-model-len 2048 --port 8000 > /tmp/vllm.log 2>&1 < /dev/null &
  echo $! > /tmp/vllm.pid
  setsid $JT exporter --port 9400 --gpus 0 > /tmp/exporter.log 2>&1 < /dev/null &
  setsid $JT exporter --port 9401 --gpus 0 --format dcgm > /tmp/exporter-dcgm.log 2>&1 < /dev/null &
fi
t0=$(date +%s)
until healthy; do
  sleep 2; kill -0 "$(cat /tmp/vllm.pid)" 2>/dev/null || { echo "vllm died"; tail -30 /tmp/vllm.log; exit 1; }
  [ $(( $(date +%s) - t0 )) -gt 400 ] && { echo "vllm not healthy in 400 s"; exit 1; }
done
echo "vllm healthy after $(( $(date +%s) - t0 )) s"

bench() {  # bench NAME ARGS...: a jouletune bench against the server, read-only energy
  local name=$1; shift
  $JT bench --base-url http://127.0.0.1:8000 --server-max-num-seqs 256 --no-progress \
    --result-filename "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1
  echo "bench $name exit $? at $(date +%T)"; grep -E "prompt tokens|energy per output|steady" "$OUT/$name.txt"
}

if has len; then  # prompt lengths counted by vLLM, the model's own tokenizer (the default)
  for LEN in 128 512 1536; do
    bench "len$LEN" --exporter-url http://127.0.0.1:9400 --random-input-len "$LEN" \
      --random-output-len 32 --max-concurrency 64 --num-prompts 192 --seed $((SEED + LEN)) \
      --check minWindowS=2
  done
fi

clients() {  # clients ORDER TAG C SEED RANGE: both clients on one 512/256 workload, ORDER "jv"
  # or "vj"; each client its own prompt seed (one the other used would hit vLLM's prefix cache)
  local order=$1 tag=$2 c=$3 seed=$4 range=$5 n=$(( $3 * 8 )) who
  for who in $(echo "$order" | grep -o .); do
    if [ "$who" = j ]; then
      bench "${tag/\%/jouletune}" --exporter-url http://127.0.0.1:9400 --random-input-len 512 \
        --random-output-len 256 --random-range-ratio "$range" --max-concurrency "$c" \
        --num-prompts "$n" --seed "$seed"
    else
      local name=${tag/\%/vllm}
      python3 -m vllm.entrypoints.cli.main bench serve --backend vllm --base-url http://127.0.0.1:8000 \
        --model /tmp/model --dataset-name random --random-input-len 512 --random-output-len 256 \
        --random-range-ratio "$range" --num-prompts "$n" --max-concurrency "$c" --seed $((seed + 1)) \
        --ignore-eos --save-result --result-dir "$OUT" --result-filename "$name.json" > "$OUT/$name.txt" 2>&1
      echo "vllm bench serve $name exit $? at $(date +%T)"
      grep -E "Median (TTFT|TPOT)|Output token throughput" "$OUT/$name.txt"
    fi
  done
}

if has pair; then
  for C in ${PAIR_C:-16 128}; do clients jv "%_c$C" "$C" $((SEED + C)) 0; done
fi

if has reps; then  # the order alternates so that a drift over the session favours neither client
  mkdir -p "$OUT/reps"
  C=${REPS_C:-128}; k=0
  for R in ${REPS_RANGE:-0 0.5}; do
    for i in $(seq 1 "${REPS:-3}"); do
      order=jv; (( i % 2 )) || order=vj; k=$((k + 1))
      clients "$order" "reps/%_c${C}_rr${R}_$i" "$C" $((SEED + 1000 + 10 * k)) "$R"
    done
  done
fi

if has sweep; then  # each point its own prompts (seed 21 + C): a prompt sent before would
  # find its blocks in the prefix cache. SWEEP_SEED_STEP=0 gives every point seed 21, as the
  # first H200 run did (benchmarks/results/h200-measured/README.md).
  mkdir -p "$OUT/sweep"
  setsid python3 benchmarks/h100_vllm/nvml_energy_log.py "$OUT/sweep/nvml.csv" 0 > /dev/null 2>&1 < /dev/null &
  echo $! > /tmp/nvlog.pid
  for C in ${SWEEP_C:-1 8 32 64 128 256}; do
    bench "sweep/c$C" --exporter-url http://127.0.0.1:9400 --random-input-len 512 \
      --random-output-len 256 --max-concurrency "$C" --num-prompts 100000 --duration 25 \
      --seed $(( 21 + C * ${SWEEP_SEED_STEP:-1} ))
  done
  kill "$(cat /tmp/nvlog.pid)"; rm -f /tmp/nvlog.pid
  gzip -f "$OUT/sweep/nvml.csv"
fi

if has dcgm; then  # energy through dcgm-exporter's names, an independent NVML log beside it
  setsid python3 benchmarks/h100_vllm/nvml_energy_log.py "$OUT/nvml_dcgm.csv" 0 > /dev/null 2>&1 < /dev/null &
  echo $! > /tmp/nvlog.pid
  bench dcgm_c128 --exporter-url http://127.0.0.1:9401 --energy-source dcgm --random-input-len 512 \
    --random-output-len 256 --max-concurrency 128 --num-prompts 100000 --duration 20 --seed $((SEED + 7))
  kill "$(cat /tmp/nvlog.pid)"; rm -f /tmp/nvlog.pid
  gzip -f "$OUT/nvml_dcgm.csv"
fi

if has calib; then  # batch-only calibration: never changes a GPU setting
  $JT calibrate --base-url http://127.0.0.1:8000 --exporter-url http://127.0.0.1:9400 \
    --out "$OUT/calibrate" --read-only --concurrency "${CALIB_C:-1,8,64,256}" $(printf -- '--workload %s ' ${CALIB_WORKLOADS:-512:256}) \
    --duration "${CALIB_S:-15}" --max-num-seqs 256 --max-model-len 2048 --model /tmp/model \
    --gpu "${CALIB_GPU:-h100-80gb}" --seed $((SEED + 500)) > "$OUT/calibrate.txt" 2>&1
  echo "calibrate exit $? at $(date +%T)"; tail -25 "$OUT/calibrate.txt"
fi

{ nvidia-smi --query-gpu=name,driver_version,power.limit,power.default_limit,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch, vllm, tokenizers; print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('vllm', vllm.__version__); print('tokenizers', tokenizers.__version__)"
} > "$OUT/versions.txt" 2>&1
tail -40 /tmp/vllm.log > "$OUT/vllm_tail.log"
