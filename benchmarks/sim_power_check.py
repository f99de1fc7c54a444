"""The simulated H100's power against the real one at idle, memory-bound and compute-bound load.

Reads the measured profile in `results/h100-validation/h100_validation.json` (made by
`h100_validate.py` on the H100) and puts the same loads on the simulated GPU's power model:
idle is no process; memory-bound is a device-to-device copy streaming DRAM at the measured
rate; compute-bound is bf16 matmuls, which the 700 W limit throttles. Prints measured vs
simulated power and SM clock (and the matmul rate the simulated clock implies).

    python benchmarks/sim_power_check.py
"""

from __future__ import annotations

import json
from pathlib import Path

from jouletune.gpu.simulated import KernelWork, gpu_model, plan_step
from jouletune.sim import DEFAULT_PERF

_RESULT = Path(__file__).resolve().parent / "results" / "h100-validation" / "h100_validation.json"


def _row(name: str, real_w: float, sim_w: float, real_mhz: float, sim_mhz: float) -> str:
    err = 100.0 * (sim_w - real_w) / real_w
    return f"| {name} | {real_w:.1f} | {sim_w:.1f} | {err:+.1f}% | {real_mhz:.0f} | {sim_mhz:.0f} |"


def main() -> None:
    """Print the comparison as a Markdown table."""
    measured = json.loads(_RESULT.read_text())
    h100 = gpu_model("h100-80gb")
    limit_w = measured["environment"]["power_limit_w"]
    # One second of each load: memory-bound work is all DRAM time, compute-bound all math.
    copy = KernelWork(groups=[(1.0, 0.0)], fixed_gpu_s=0.0, host_s=0.0, bytes_moved=0, flops=0)
    matmul = KernelWork(groups=[(0.0, 1.0)], fixed_gpu_s=0.0, host_s=0.0, bytes_moved=0, flops=0)
    # A process holding a CUDA context idles at the loaded level, as a vLLM server does.
    copy_out = plan_step(h100, copy, limit_w, h100.idle_loaded_w)
    matmul_out = plan_step(h100, matmul, limit_w, h100.idle_loaded_w)
    idle, mem, comp = (measured[k] for k in ("idle", "memory_bound", "compute_bound"))
    print(f"GPU {measured['environment']['gpu_name']}, limit {limit_w:g} W")
    print("| load | measured W | simulated W | error | measured SM MHz | simulated SM MHz |")
    print("|---|---|---|---|---|---|")
    print(_row("idle, no process", idle["counter_avg_power_w"], h100.idle_w, 345, 345))
    print(
        _row(
            "memory-bound copies",
            mem["counter_avg_power_w"],
            copy_out.power_w,
            mem["sm_clock_hz"]["mean"] / 1e6,
            copy_out.sm_clock_hz / 1e6,
        )
    )
    print(
        _row(
            "compute-bound bf16 matmuls",
            comp["counter_avg_power_w"],
            matmul_out.power_w,
            comp["sm_clock_hz"]["mean"] / 1e6,
            matmul_out.sm_clock_hz / 1e6,
        )
    )
    sim_tflops = h100.bf16_dense_flops * matmul_out.sm_clock_hz / h100.max_sm_clock_hz / 1e12
    print(
        f"matmul rate: measured {comp['load_result']['tflops']:.0f} TFLOP/s; simulated at its "
        f"clock {sim_tflops * DEFAULT_PERF.gemm_efficiency:.0f} TFLOP/s "
        f"({sim_tflops:.0f} peak x gemm_efficiency {DEFAULT_PERF.gemm_efficiency:g})"
    )


if __name__ == "__main__":
    main()
