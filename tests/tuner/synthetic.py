"""A synthetic serving curve for the search core's tests: bench-result dicts from a point.

Shaped like the H100 calibration (J/token falls and latency rises with max_num_seqs; power
rises with the batch until a cap binds, then the step slows). It stands in for measurements
only where the thing under test is the search's bookkeeping, not a server.
"""

from __future__ import annotations

import math
from typing import Any

from jouletune.tuner import PointConfig, TrialOutcome

MAX_POWER_W = 700.0


def bench_result(point: PointConfig, *, noise: float = 0.0) -> dict[str, Any]:
    """A result with DESIGN.md's keys for `point`; `noise` scales J/token (1.0 = +0%)."""
    seqs = point.server.max_num_seqs
    uncapped_w = 430.0 + 270.0 * (1.0 - math.exp(-seqs / 60.0))
    cap_w = point.power_limit_w or MAX_POWER_W
    power_w = min(uncapped_w, cap_w)
    slowdown = (uncapped_w / power_w) ** 0.6
    tpot_ms = (6.5 + 0.04 * seqs) * slowdown
    throughput = seqs * 1000.0 / tpot_ms
    energy = power_w / throughput * (1.0 + noise)
    latency = {"mean": tpot_ms, "p50": tpot_ms, "p90": tpot_ms * 1.05, "p99": tpot_ms * 1.2}
    return {
        "completed": 100,
        "failed": 0,
        "valid": True,
        "partial": False,
        "energy_per_output_token_j": energy,
        "tpot_ms": latency,
        "itl_ms": latency,
        "ttft_ms": {k: v * 10 for k, v in latency.items()},
        "avg_power_w": power_w,
        "output_token_throughput": throughput,
        "power_cap_bound_fraction": 1.0 if power_w >= cap_w * 0.99 else 0.0,
    }


def measured(point: PointConfig, *, noise: float = 0.0) -> TrialOutcome:
    """An outcome as a runner would return it for `point`."""
    return TrialOutcome(result=bench_result(point, noise=noise), duration_s=30.0)
