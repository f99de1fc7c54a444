"""Power caps against SM clock locks on the simulated H100: the simulator's predictions.

    .venv/bin/python benchmarks/sim_clock_lock.py [--window-s 10]

Runs the calibration's closed loop (Llama-3.1-8B, 512 prompt / 256 output tokens, C
clients, `run_closed_loop` in simulated time) at C = 1, 8, 32 and 128: unconstrained, under
power caps of 500, 400 and 300 W, and with the SM clock locked at 1605, 1410, 1200 and 990
MHz. Prints one markdown table (docs/simulator.md, "Power caps and clock locks") and exits 1
unless it shows what arXiv 2605.11999 reports qualitatively: at C = 1 the GPU draws less than
500 W, so a 500 W cap saves (almost) nothing, while a 1,200 MHz lock saves a quarter or more
of the energy per token at (almost) no inter-token latency.

Every figure is a prediction of the model (docs/simulator.md), not a measurement: the model
was fitted at full clock, and its split of dynamic power between the clock-dependent logic
and DRAM is an assumption.
"""

from __future__ import annotations

import argparse
import sys

from jouletune.gpu.simulated import gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, ClosedLoopResult, EngineConfig, run_closed_loop

_CONCURRENCY = (1, 8, 32, 128)
_CAPS_W = (500.0, 400.0, 300.0)
_LOCKS_MHZ = (1605, 1410, 1200, 990)
# The calibration server's settings (benchmarks/sim_calibration.py).
_CONFIG = EngineConfig(
    arch=model_arch("meta-llama/Llama-3.1-8B-Instruct"),
    gpu=gpu_model("h100-80gb"),
    tensor_parallel_size=1,
    perf=DEFAULT_PERF,
    max_num_seqs=256,
    max_model_len=2048,
    max_num_batched_tokens=8192,
    gpu_memory_utilization=0.92,
)


def _run(
    concurrency: int, window_s: float, *, cap_w: float | None = None, lock_mhz: int | None = None
) -> ClosedLoopResult:
    return run_closed_loop(
        _CONFIG,
        concurrency=concurrency,
        input_len=512,
        output_len=256,
        window_s=window_s,
        power_limit_w=cap_w,
        sm_clock_lock_mhz=lock_mhz,
    )


def _row(c: int, setting: str, r: ClosedLoopResult, free: ClosedLoopResult) -> str:
    saving = 100.0 * (1.0 - r.j_per_output_token / free.j_per_output_token)
    return (
        f"| {c} | {setting} | {r.j_per_output_token:.4f} | {saving:+.1f}% | {r.power_w:.0f} | "
        f"{r.itl_ms_p50:.2f} | {r.ttft_ms_p50:.0f} | {r.sm_clock_mhz_mean:.0f} |"
    )


def main() -> int:
    """Print the table; 1 when the low-batch claim does not hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=10.0, help="steady-state window")
    args = parser.parse_args()
    print("| C | setting | J/out-tok | saving | power W | ITL p50 ms | TTFT p50 ms | SM MHz |")
    print("|---|---|---|---|---|---|---|---|")
    low: dict[str, ClosedLoopResult] = {}
    for c in _CONCURRENCY:
        free = _run(c, args.window_s)
        print(_row(c, "none", free, free))
        for cap in _CAPS_W:
            capped = _run(c, args.window_s, cap_w=cap)
            print(_row(c, f"cap {cap:g} W", capped, free))
            low.update({f"cap {cap:g}": capped} if c == 1 else {})
        for lock in _LOCKS_MHZ:
            locked = _run(c, args.window_s, lock_mhz=lock)
            print(_row(c, f"lock {lock} MHz", locked, free))
            low.update({f"lock {lock}": locked} if c == 1 else {})
        if c == 1:
            low["none"] = free
    return 0 if _low_batch_claim_holds(low) else 1


def _low_batch_claim_holds(low: dict[str, ClosedLoopResult]) -> bool:
    free, capped, locked = low["none"], low["cap 500"], low["lock 1200"]
    cap_saving = 1.0 - capped.j_per_output_token / free.j_per_output_token
    lock_saving = 1.0 - locked.j_per_output_token / free.j_per_output_token
    checks = {
        "C=1 draws under 500 W": free.power_w < 500.0,
        "the 500 W cap saves under 1%": abs(cap_saving) < 0.01,
        "the 1200 MHz lock saves 25% or more": lock_saving >= 0.25,
        "the lock costs under 1% ITL p50": locked.itl_ms_p50 <= 1.01 * free.itl_ms_p50,
    }
    for name, ok in checks.items():
        if not ok:
            print(f"FAILED: {name}", file=sys.stderr)
    return all(checks.values())


if __name__ == "__main__":
    sys.exit(main())
