"""The H200 from its datasheet alone: predict, commit, then measure and report the error.

    python benchmarks/h200_prediction.py predict      # results/h200-prediction/prediction.json
    python benchmarks/h200_prediction.py compare DIR  # DIR: the H200's bench results (c{C}.json)
    python benchmarks/h200_prediction.py replay DIR [--gpu-profile PROFILE]
                                                      # the same runs replayed as they ran

The simulator was fitted to the H100 only. Its H200 entry (`jouletune.gpu.simulated`,
`h200-141gb`) changes only datasheet figures: 141 GB of HBM3e at 4.8 TB/s instead of 80 GB at
3.35 TB/s, the same GH100 die, clocks, 700 W limit and, as an assumption, the H100's fitted
power coefficients and engine constants. `predict` runs the plan the H200 will run
(`SECTIONS=sweep benchmarks/h100_vllm/tokenizer_session.sh`, its `sweep/` folder):
Llama-3.1-8B shape, one `vllm serve` with `--max-num-seqs 256 --max-model-len 2048` (vLLM
0.24's defaults otherwise), closed loops of C clients at 512 prompt / 256 output tokens. It
is committed before the H200 is measured; `compare` then reads `jouletune bench` results of
the same plan and prints the error of every figure, with no refit.

`replay` replays the measured runs (those of the plan's C that DIR holds) as they ran, with
the same H200 model and no refit: one simulated server for all of them, in their order, each
run's own prompts (the bench's lengths and seed), so a prompt a later run sends again finds
its blocks in the prefix cache as it did in vLLM (`benchmarks/sim_fidelity.py`'s replay, on
`h200-141gb`). It uses the simulator as it is now, not as it was when the prediction was made.
With `--gpu-profile` (a `jouletune calibrate` profile of an H200) it replays them on that
profile instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_fidelity as fidelity

from jouletune import __version__
from jouletune.gpu.simulated import gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, EngineConfig, run_closed_loop

ROOT = Path(__file__).resolve().parent
PREDICTION = ROOT / "results" / "h200-prediction" / "prediction.json"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONCURRENCY = (1, 8, 32, 64, 128, 256)
INPUT_LEN, OUTPUT_LEN, WINDOW_S = 512, 256, 20.0
MAX_NUM_SEQS = 256
SERVER = {
    "max_num_seqs": MAX_NUM_SEQS,
    "max_model_len": 2048,
    "max_num_batched_tokens": 8192,  # vLLM 0.24's default on a GPU of 70 GiB or more
    "gpu_memory_utilization": 0.92,
}
FIGURES = ("j_per_output_token", "itl_ms_p50", "ttft_ms_p50", "power_w", "output_tok_s")


def _config() -> EngineConfig:
    return EngineConfig(
        arch=model_arch(MODEL),
        gpu=gpu_model("h200-141gb"),
        tensor_parallel_size=1,
        perf=DEFAULT_PERF,
        **SERVER,  # type: ignore[arg-type]
    )


def predict() -> dict[str, Any]:
    """The simulator's figures for every planned concurrency, with what they rest on."""
    points = []
    for c in CONCURRENCY:
        r = run_closed_loop(
            _config(), concurrency=c, input_len=INPUT_LEN, output_len=OUTPUT_LEN, window_s=WINDOW_S
        )
        points.append({"concurrency": c, **{f: getattr(r, f) for f in FIGURES}})
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    gpu = gpu_model("h200-141gb")
    return {
        "what": "prediction by jouletune's simulator, not a measurement",
        "made_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jouletune": __version__,
        "commit": commit,
        "gpu": {
            "catalog": gpu.key,
            "name": gpu.name,
            "memory_bandwidth_bytes_s": gpu.memory_bandwidth_bytes_s,
            "memory_bytes": gpu.memory_bytes,
            "bf16_dense_flops": gpu.bf16_dense_flops,
            "power_coefficients": "the H100's, fitted to the H100 (an assumption)",
        },
        "model": MODEL,
        "server": SERVER,
        "workload": {"input_len": INPUT_LEN, "output_len": OUTPUT_LEN, "window_s": WINDOW_S},
        "points": points,
    }


def _measured(folder: Path, c: int) -> dict[str, float]:
    r = json.loads((folder / f"c{c}.json").read_text())
    return {
        "j_per_output_token": r["energy_per_output_token_j"],
        "itl_ms_p50": r["itl_ms"]["p50"],
        "ttft_ms_p50": r["ttft_ms"]["p50"],
        "power_w": r["avg_power_w"],
        "output_tok_s": r["output_token_throughput"],
    }


def compare(folder: Path) -> None:
    """Print predicted vs measured for every point, and each figure's worst error."""
    prediction = json.loads(PREDICTION.read_text())
    print(f"prediction made {prediction['made_utc']} at {prediction['commit'][:10]}")
    rows = [(p["concurrency"], {f: p[f] for f in FIGURES}) for p in prediction["points"]]
    _print_errors(folder, rows, "pred")


def replay(folder: Path, profile: Path | None = None) -> None:
    """Print the replay of the measured runs against them, and each figure's worst error;
    on `profile` (a calibration) where given, else on the catalog's h200-141gb."""
    runs = []
    for c in (c for c in CONCURRENCY if (folder / f"c{c}.json").is_file()):
        point = fidelity._point(folder / f"c{c}.json", name=f"c{c}", server="h200")
        runs.append(replace(point, word_prompts=False, max_num_seqs=MAX_NUM_SEQS))
    gpu, perf = (
        (gpu_model("h200-141gb"), DEFAULT_PERF) if profile is None else fidelity.simulator(profile)
    )
    figures = fidelity.simulate_server(runs, gpu=gpu, perf=perf)
    print(f"replay of {folder} on {profile or 'h200-141gb'}, jouletune {__version__}")
    rows = [
        (
            point.concurrency,
            {
                "j_per_output_token": sim.j_per_output_token,
                "itl_ms_p50": sim.itl_ms_p50,
                "ttft_ms_p50": sim.ttft_ms_p50,
                "power_w": sim.avg_power_w,
                "output_tok_s": sim.output_tok_s,
            },
        )
        for point, sim in zip(runs, figures, strict=True)
    ]
    _print_errors(folder, rows, "sim")


def _print_errors(folder: Path, rows: list[tuple[int, dict[str, float]]], label: str) -> None:
    """One table row per concurrency: `label`'s figures, the measured ones and the error."""
    print("| C | " + " | ".join(f"{f} {label} | meas | err" for f in FIGURES) + " |")
    worst = dict.fromkeys(FIGURES, 0.0)
    for concurrency, figures in rows:
        m = _measured(folder, concurrency)
        cells = []
        for f in FIGURES:
            err = figures[f] / m[f] - 1
            worst[f] = max(worst[f], abs(err), key=abs)
            cells.append(f"{figures[f]:.4g} | {m[f]:.4g} | {err:+.1%}")
        print(f"| {concurrency} | " + " | ".join(cells) + " |")
    print("worst: " + ", ".join(f"{f} {e:.1%}" for f, e in worst.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("predict")
    sub.add_parser("compare").add_argument("folder", type=Path)
    replay_args = sub.add_parser("replay")
    replay_args.add_argument("folder", type=Path)
    replay_args.add_argument("--gpu-profile", type=Path, help="a calibrated profile to replay on")
    args = parser.parse_args()
    if args.cmd == "predict":
        PREDICTION.parent.mkdir(parents=True, exist_ok=True)
        PREDICTION.write_text(json.dumps(predict(), indent=2) + "\n")
        print(PREDICTION.read_text())
    elif args.cmd == "compare":
        compare(args.folder)
    else:
        replay(args.folder, args.gpu_profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
