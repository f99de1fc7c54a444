"""The SLO boundary search: where the lowest-energy feasible point usually lies, found first.

Two regularities of LLM serving make the boundary cheap to find (the H100 calibration shows
both): raising max_num_seqs lowers J/output-token and raises per-token latency, and lowering
a binding power cap lowers J/output-token and raises latency. So the feasible region, per
server family (tensor parallelism, max_num_batched_tokens), is max_num_seqs at or below a
boundary s*, with a cap no lower than a boundary cap for each, and the minimum-energy point
sits on that boundary. The search:

1. brackets s* over max_num_seqs, uncapped (one server start each): at the midpoint until
   both ends of the bracket are measured, then at the largest value under the SLO crossing of
   the line through the two ends' latencies (regula falsi), but never below the midpoint. At
   a full batch (`workload.saturate`) latency grows close to linearly with max_num_seqs (the
   H100 sweep: 0.070, 0.078, 0.080 ms per sequence from 32 to 256); with fixed client counts
   it flattens above them, and the midpoint floor bounds what a bad line can cost;
2. walks the boundary from s* downwards: at each max_num_seqs it lowers the cap while the
   point stays feasible and J/token keeps falling (no restart), then moves one max_num_seqs
   down, starting from the lowest cap that was feasible above; it stops at the first
   max_num_seqs whose best is no better than the one above.

Families are bracketed first, then walked best first. Everything is derived from the
records, so a resumed study continues where it stopped. Pure functions, no Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from jouletune.tuner._point import Point
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner._space import SearchGrid

__all__ = ["brackets_closed", "next_boundary_point", "next_power_step"]

# A cap "binds" when the GPU's mean power over the window reaches this fraction of it: NVML
# keeps a capped H100 a few watts under its limit.
BINDS_RATIO = 0.95
# Latency percentiles of repeated short measurements differ by a few percent, so a point that
# misses its SLO by less than this fraction of the bound may meet it on another run: it does
# not stop a walk down the power axis (it is still never recommended unless measured feasible).
SLO_NOISE_RATIO = 0.03
# Float slack when comparing a max_num_seqs value with the interpolated SLO crossing.
_CROSSING_SLACK = 1e-6


@dataclass(frozen=True)
class _Family:
    tensor_parallel_size: int
    max_num_batched_tokens: int | None

    def point(self, seqs: int, cap: float | None = None) -> Point:
        return Point(
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            power_limit_w=cap,
        )


def next_boundary_point(records: Sequence[TrialRecord], grid: SearchGrid) -> Point | None:
    """The next point the boundary search measures, or None when it has nothing left."""
    usable = _usable(records)
    taken = {r.point for r in records if r.role is not Role.FINALIST and not r.interrupted}
    for family in _families(grid):
        point = _bisection_step(family, usable, grid)
        if point is not None and point not in taken:
            return point
    walks = sorted(_families(grid), key=lambda f: _family_best(f, usable))
    for family in walks:
        point = _walk_step(family, usable, grid, taken)
        if point is not None:
            return point
    return None


def brackets_closed(records: Sequence[TrialRecord], grid: SearchGrid) -> bool:
    """True once every family's s* is bracketed (power steps wait until then)."""
    usable = _usable(records)
    return all(_bisection_step(f, usable, grid) is None for f in _families(grid))


def next_power_step(
    record: TrialRecord, same_server: Sequence[TrialRecord], caps: Sequence[float | None]
) -> float | None:
    """The cap to measure next under `record`'s server, or None when its power axis is done.

    Downwards while `record` is feasible and lowering still paid, skipping caps above the
    power the server drew (they would not bind); upwards when a binding cap broke an SLO.
    `caps` runs from None (as found, the highest) downwards.
    """
    taken = {r.point.power_limit_w for r in same_server if not r.interrupted}
    index = caps.index(record.point.power_limit_w)
    power_w = None if record.figures is None else record.figures.avg_power_per_gpu_w
    if _passable(record):
        higher = [
            r
            for r in same_server
            if r.state is TrialState.COMPLETE and caps.index(r.point.power_limit_w) < index
        ]
        if higher:
            nearest = max(higher, key=lambda r: caps.index(r.point.power_limit_w))
            if _energy(nearest) <= _energy(record):
                return None  # lowering the cap stopped paying
        for cap in caps[index + 1 :]:
            assert cap is not None, "only the first choice may be None"
            if cap in taken:
                return None
            if power_w is None or cap < power_w * BINDS_RATIO:
                return cap
        return None
    cap_now = record.point.power_limit_w
    if cap_now is None or power_w is None or power_w < cap_now * BINDS_RATIO:
        return None  # the cap did not bind, so raising it cannot make this point faster
    for cap in reversed(caps[:index]):
        return None if cap in taken else cap
    return None


def _usable(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [
        r
        for r in records
        if r.measured and r.role is not Role.FINALIST and r.state is not TrialState.RUNNING
    ]


def _families(grid: SearchGrid) -> list[_Family]:
    return [
        _Family(tp, mbt)
        for tp in grid.tensor_parallel_sizes
        for mbt in grid.max_num_batched_tokens_choices
    ]


def _bisection_step(
    family: _Family, usable: Sequence[TrialRecord], grid: SearchGrid
) -> Point | None:
    """The uncapped point that narrows the family's bracket, or None once it is closed."""
    seqs = list(grid.max_num_seqs_choices)
    lo, hi = _bracket(family, usable, seqs)
    if hi - lo <= 1:
        return None
    # Never below the midpoint: where latency bends upwards the line's crossing would creep
    # up from `lo` one value per server start; the midpoint at least halves the bracket.
    midpoint = (lo + hi) // 2
    interpolated = _interpolated(family, usable, seqs, lo, hi)
    index = midpoint if interpolated is None else max(midpoint, interpolated)
    return family.point(seqs[index])


def _interpolated(
    family: _Family, usable: Sequence[TrialRecord], seqs: list[int], lo: int, hi: int
) -> int | None:
    """The largest index inside (lo, hi) at or below the line's SLO crossing, or None.

    The line runs through the two bracket ends' measured latencies; None unless both ends
    were measured and an SLO binds between them.
    """
    if lo < 0 or hi >= len(seqs):
        return None
    low, high = _uncapped(family, usable, seqs[lo]), _uncapped(family, usable, seqs[hi])
    if low is None or high is None:
        return None
    crossings = []
    for metric, excess_ms in high.slo_excess_ms.items():
        bound_ms = high.latency_ms[metric] - excess_ms
        rise_ms = high.latency_ms[metric] - low.latency_ms.get(metric, math.inf)
        if excess_ms > 0 and rise_ms > 0:
            share = (bound_ms - low.latency_ms[metric]) / rise_ms
            low_seqs, high_seqs = low.point.max_num_seqs, high.point.max_num_seqs
            crossings.append(low_seqs + share * (high_seqs - low_seqs))
    if not crossings:
        return None
    # A crossing computed as 159.99999999999997 must still admit 160.
    below = [i for i in range(lo + 1, hi) if seqs[i] <= min(crossings) + _CROSSING_SLACK]
    return max(below, default=lo + 1)


def _uncapped(family: _Family, usable: Sequence[TrialRecord], seqs: int) -> TrialRecord | None:
    """A completed uncapped measurement of `seqs` in `family`, if there is one."""
    return next(
        (
            r
            for r in usable
            if r.state is TrialState.COMPLETE
            and r.point.power_limit_w is None
            and r.point.max_num_seqs == seqs
            and _in_family(r, family)
        ),
        None,
    )


def _bracket(family: _Family, usable: Sequence[TrialRecord], seqs: list[int]) -> tuple[int, int]:
    """(highest index known feasible uncapped or -1, lowest known infeasible or len)."""
    lo, hi = -1, len(seqs)
    for r in usable:
        if r.point.power_limit_w is not None or not _in_family(r, family):
            continue
        i = seqs.index(r.point.max_num_seqs)
        if r.state is TrialState.COMPLETE and r.feasible:
            lo = max(lo, i)
        else:  # infeasible, or failed (e.g. out of memory): nothing above will do better
            hi = min(hi, i)
    return lo, max(hi, lo + 1)


def _walk_step(
    family: _Family, usable: Sequence[TrialRecord], grid: SearchGrid, taken: set[Point]
) -> Point | None:
    seqs = list(grid.max_num_seqs_choices)
    caps = grid.power_limits_w
    lo, _ = _bracket(family, usable, seqs)
    above_best = math.inf
    above_floor: float | None = None
    for level in range(lo, -1, -1):
        server = family.point(seqs[level])
        here = [r for r in usable if r.point.server == server]
        feasible = [r for r in here if r.state is TrialState.COMPLETE and r.feasible]
        if not feasible:
            start = family.point(seqs[level], above_floor)
            return None if start in taken or here else start
        passable = [r for r in here if _passable(r)]
        lowest = max(passable, key=lambda r: caps.index(r.point.power_limit_w))
        cap = next_power_step(lowest, here, caps)
        if cap is not None and family.point(seqs[level], cap) not in taken:
            return family.point(seqs[level], cap)
        best = min(_energy(r) for r in feasible)
        if best >= above_best:
            return None  # the boundary's optimum lies above this level
        above_best = best
        lowest_feasible = max(feasible, key=lambda r: caps.index(r.point.power_limit_w))
        above_floor = lowest_feasible.point.power_limit_w
    return None


def _passable(record: TrialRecord) -> bool:
    """Feasible, or missing an SLO by less than the measurements' noise."""
    if record.state is not TrialState.COMPLETE or record.feasible is None:
        return False
    if record.feasible:
        return True
    worst = max(
        (excess / (record.latency_ms[m] - excess) for m, excess in record.slo_excess_ms.items()),
        default=math.inf,
    )
    return worst <= SLO_NOISE_RATIO


def _family_best(family: _Family, usable: Sequence[TrialRecord]) -> float:
    energies = [
        _energy(r)
        for r in usable
        if _in_family(r, family) and r.state is TrialState.COMPLETE and r.feasible
    ]
    return min(energies, default=math.inf)


def _in_family(record: TrialRecord, family: _Family) -> bool:
    return (
        record.point.tensor_parallel_size == family.tensor_parallel_size
        and record.point.max_num_batched_tokens == family.max_num_batched_tokens
    )


def _energy(record: TrialRecord) -> float:
    return record.energy_per_output_token_j or math.inf
