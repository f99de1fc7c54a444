"""Request arrival times, computed before the run from the seed (vLLM's `get_request`).

Gaps between arrivals follow a gamma distribution with shape = burstiness and
scale = 1 / (rate * burstiness), so the mean gap is 1 / rate: burstiness 1 is a Poisson
process, below 1 burstier, above 1 more uniform. As vLLM does, the cumulative times are then
rescaled so the last arrival falls at exactly n / rate, which keeps the offered load the same
across seeds.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["arrival_offsets_s"]


def arrival_offsets_s(n: int, *, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """Send time of each of `n` requests, seconds after the run starts (non-decreasing).

    Raises:
        ValueError: `n` < 0, or a rate or burstiness that is not positive.
    """
    if n < 0:
        raise ValueError(f"negative number of requests: {n=}")
    if not request_rate > 0 or not burstiness > 0:
        raise ValueError(f"rate and burstiness must be positive: {request_rate=} {burstiness=}")
    if math.isinf(request_rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / request_rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)
    offsets = np.cumsum(gaps)
    if n and offsets[-1] > 0:
        offsets *= (n / request_rate) / offsets[-1]
    return [float(x) for x in offsets]
