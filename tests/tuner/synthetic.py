"""A synthetic serving curve for the search core's tests: a point's figures, computed.

Shaped like the H100 calibration (J/token falls and latency rises with max_num_seqs; power
rises with the batch until a cap binds, then the step slows) and like the simulator's clock
model (a cap lowers the clock until the power fits; a lock below that clock cuts the dynamic
power by the cube of the clock ratio and, decode being memory-bound, barely slows it). It
stands in for measurements only where the thing under test is the search's bookkeeping, not
a server.
"""

from __future__ import annotations

import math

from jouletune.tuner import Point, TrialFigures, TrialOutcome

MAX_POWER_W = 700.0
MAX_CLOCK_MHZ = 1980.0
IDLE_W = 121.0


def figures(point: Point, *, noise: float = 0.0) -> TrialFigures:
    """What a measurement of `point` would find; `noise` scales J/token (0.0 = +0%)."""
    seqs = point.max_num_seqs
    uncapped_w = 430.0 + 270.0 * (1.0 - math.exp(-seqs / 60.0))
    cap_w = point.power_limit_w or MAX_POWER_W
    power_w = min(uncapped_w, cap_w)
    slowdown = (uncapped_w / power_w) ** 0.6
    clock_mhz = MAX_CLOCK_MHZ * ((power_w - IDLE_W) / (uncapped_w - IDLE_W)) ** (1 / 3)
    if point.sm_clock_mhz is not None and point.sm_clock_mhz < clock_mhz:
        power_w = IDLE_W + (power_w - IDLE_W) * (point.sm_clock_mhz / clock_mhz) ** 3
        slowdown *= (clock_mhz / point.sm_clock_mhz) ** 0.05
        clock_mhz = point.sm_clock_mhz
    tpot_ms = (6.5 + 0.04 * seqs) * slowdown
    throughput = seqs * 1000.0 / tpot_ms
    stats = {"p50": tpot_ms, "p90": tpot_ms * 1.05, "p99": tpot_ms * 1.2}
    latency = {f"{family}_{k}": v for family in ("tpot", "itl") for k, v in stats.items()}
    latency |= {"tpot_mean": tpot_ms, "ttft_p50": tpot_ms * 10, "ttft_p90": tpot_ms * 10.5}
    return TrialFigures(
        energy_per_output_token_j=power_w / throughput * (1.0 + noise),
        latency_ms=latency,
        avg_power_w=power_w,
        avg_power_per_gpu_w=power_w / point.tensor_parallel_size,
        output_token_throughput=throughput,
        power_cap_bound_fraction=1.0 if power_w >= cap_w * 0.99 else 0.0,
        avg_sm_clock_mhz=clock_mhz,
        completed=100,
    )


def measured(point: Point, *, noise: float = 0.0) -> TrialOutcome:
    """An outcome as a runner would return it for `point`."""
    return TrialOutcome(figures=figures(point, noise=noise), duration_s=30.0)
