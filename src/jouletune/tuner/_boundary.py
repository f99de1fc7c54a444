"""The SLO boundary search: where the lowest-energy feasible point usually lies, found first.

Two regularities of LLM serving make the boundary cheap to find (the H100 calibration shows
both): raising max_num_seqs lowers J/output-token and raises per-token latency, and lowering
a binding power cap lowers J/output-token and raises latency. So the feasible region, per
server family (tensor parallelism, max_num_batched_tokens, API servers), is max_num_seqs at
or below a boundary s*, with a cap no lower than a boundary cap for each, and the
minimum-energy point sits on that boundary. The search:

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

SM clock locks are walked like caps, as a second `Ladder` under the same server (neither
needs a restart): once lowering the cap stops paying, the clock is locked lower and lower,
uncapped, from the server's measurement with nothing changed, while that pays. A lock above
the clock the server already ran at is skipped as a cap above the power it drew is: it
would not bind. Both knobs lower the clock (`jouletune.gpu.simulated.plan_step`), so a point
with both is left to the sampler; the walk changes one setting at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from jouletune.tuner._point import Point
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner._space import SearchGrid

__all__ = [
    "Ladder",
    "brackets_closed",
    "gpu_ladders",
    "next_boundary_point",
    "next_gpu_step",
    "next_power_step",
    "next_rung",
    "rungs_below",
]

# A cap "binds" when the GPU's mean power over the window reaches this fraction of it: NVML
# keeps a capped H100 a few watts under its limit. A lock binds, likewise, when the GPU's mean
# SM clock reaches this fraction of it (a lock 5% under the clock the GPU ran at lowers it
# by less than the clock moves between prefill and decode steps).
BINDS_RATIO = 0.95
# Latency percentiles of repeated short measurements differ by a few percent, so a point that
# misses its SLO by less than this fraction of the bound may meet it on another run: it does
# not stop a walk down the power axis (it is still never recommended unless measured feasible).
SLO_NOISE_RATIO = 0.03
# Float slack when comparing a max_num_seqs value with the interpolated SLO crossing.
_CROSSING_SLACK = 1e-6


@dataclass(frozen=True)
class Ladder:
    """One GPU setting's rungs under a running server, in the order a walk takes them: as
    found (None) first, then downwards.

    A walk moves along one ladder with every other GPU setting as found, so the point with no
    setting changed stands at the top of every ladder. What tells whether a rung would bind is
    what the server used on the rung above: the busiest GPU's power for a cap, its mean SM
    clock for a lock.
    """

    field: Literal["power_limit_w", "sm_clock_mhz"]
    rungs: tuple[float | None, ...]

    def holds(self, point: Point) -> bool:
        """True when `point` stands on this ladder: every other GPU setting as found."""
        return all(getattr(point, f) is None for f in Point.GPU_SETTINGS if f != self.field)

    def value(self, point: Point) -> float | None:
        """`point`'s rung on this ladder."""
        value: float | None = getattr(point, self.field)
        return value

    def index(self, point: Point) -> int:
        """How far down this ladder `point` stands (0: as found)."""
        return self.rungs.index(self.value(point))

    def at(self, point: Point, value: float | None) -> Point:
        """`point` moved to the rung `value`."""
        return point.model_copy(update={self.field: value})

    def used(self, record: TrialRecord) -> float | None:
        """What the server used under `record`'s setting: W per GPU, or SM clock MHz."""
        figures = record.figures
        if figures is None:
            return None
        if self.field == "power_limit_w":
            return figures.avg_power_per_gpu_w
        return figures.avg_sm_clock_mhz


def gpu_ladders(caps: Sequence[float | None], clocks: Sequence[int | None]) -> list[Ladder]:
    """The walk's ladders: power limits, then SM clock locks, each from None (as found) down;
    a setting with nothing to try has none."""
    ladders = [Ladder("power_limit_w", tuple(caps)), Ladder("sm_clock_mhz", tuple(clocks))]
    return [ladder for ladder in ladders if len(ladder.rungs) > 1]


@dataclass(frozen=True)
class _Family:
    tensor_parallel_size: int
    max_num_batched_tokens: int | None
    api_server_count: int | None

    def point(self, seqs: int, cap: float | None = None) -> Point:
        return Point(
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            api_server_count=self.api_server_count,
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
    """The cap to measure next under `record`'s server (`next_rung` on the power ladder)."""
    return next_rung(record, same_server, Ladder("power_limit_w", tuple(caps)))


def next_rung(
    record: TrialRecord, same_server: Sequence[TrialRecord], ladder: Ladder
) -> float | None:
    """The rung of `ladder` to measure next under `record`'s server, or None when this ladder
    is done; `record` stands on `ladder`.

    Downwards while `record` is feasible and lowering still paid, skipping rungs that would
    not bind (a cap above the power the server drew, a lock above the clock it ran at);
    upwards when a binding rung broke an SLO.
    """
    on = [r for r in same_server if ladder.holds(r.point)]
    taken = {ladder.value(r.point) for r in on if not r.interrupted}
    index = ladder.index(record.point)
    used = ladder.used(record)
    if _passable(record):
        higher = [r for r in on if r.state is TrialState.COMPLETE and ladder.index(r.point) < index]
        if higher:
            nearest = max(higher, key=lambda r: ladder.index(r.point))
            if _energy(nearest) <= _energy(record):
                return None  # lowering the setting stopped paying
        for value in ladder.rungs[index + 1 :]:
            assert value is not None, "only the first rung may be None"
            if value in taken:
                return None
            if used is None or value < used * BINDS_RATIO:
                return value
        return None
    now = ladder.value(record.point)
    if now is None or used is None or used < now * BINDS_RATIO:
        return None  # the setting did not bind, so raising it cannot make this point faster
    for value in reversed(ladder.rungs[:index]):
        return None if value in taken else value
    return None


def next_gpu_step(
    record: TrialRecord, same_server: Sequence[TrialRecord], ladders: Sequence[Ladder]
) -> Point | None:
    """The point to measure next under `record`'s server, or None when its walk is done.

    The next rung of the ladder `record` stands on (`next_rung`); once that ladder is done,
    each later ladder's next rung, walked from its lowest passable measurement (the server's
    measurement with nothing changed, usually) or from its first rung when it has none.
    """
    start = _ladder_of(record.point, ladders)
    if start is None:
        return None  # a point with two settings changed: the sampler's, not the walk's
    ladder = ladders[start]
    value = next_rung(record, same_server, ladder)
    if value is not None:
        return ladder.at(record.point, value)
    for later in ladders[start + 1 :]:
        step = _ladder_step(later, record.point.server, same_server)
        if step is not None:
            return step
    return None


def rungs_below(point: Point, ladders: Sequence[Ladder]) -> list[Point]:
    """Every point a walk from `point` may measure next under its server, in the walk's
    order: the rest of `point`'s ladder downwards, then each later ladder from its top."""
    start = _ladder_of(point, ladders)
    if start is None:
        return []
    ladder = ladders[start]
    out = [ladder.at(point, v) for v in ladder.rungs[ladder.index(point) + 1 :]]
    for later in ladders[start + 1 :]:
        out += [later.at(point.server, v) for v in later.rungs[1:]]
    return out


def _ladder_of(point: Point, ladders: Sequence[Ladder]) -> int | None:
    """The ladder `point` walks: the one whose setting it changed, or the first when it
    changed none; None when it changed more than one."""
    for i, ladder in enumerate(ladders):
        if ladder.holds(point) and (ladder.value(point) is not None or point.unconstrained):
            return i
    return None


def _ladder_step(ladder: Ladder, server: Point, same_server: Sequence[TrialRecord]) -> Point | None:
    """The next point on `ladder` under `server`: from its lowest passable measurement, or
    its first rung when none stands on it; None when it is done or starts infeasible."""
    on = [r for r in same_server if ladder.holds(r.point) and r.measured]
    if not on:
        first = ladder.at(server, ladder.rungs[1])
        taken = {r.point for r in same_server if not r.interrupted}
        return None if first in taken else first
    passable = [r for r in on if _passable(r)]
    if not passable:
        return None  # every setting tried breaks an SLO: lower ones only slow it further
    lowest = max(passable, key=lambda r: ladder.index(r.point))
    value = next_rung(lowest, same_server, ladder)
    return None if value is None else ladder.at(server, value)


def _usable(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    return [
        r
        for r in records
        if r.measured and r.role is not Role.FINALIST and r.state is not TrialState.RUNNING
    ]


def _families(grid: SearchGrid) -> list[_Family]:
    return [
        _Family(tp, mbt, api)
        for tp in grid.tensor_parallel_sizes
        for mbt in grid.max_num_batched_tokens_choices
        for api in grid.api_server_count_choices
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
            and r.point.unconstrained
            and r.point.max_num_seqs == seqs
            and _in_family(r, family)
        ),
        None,
    )


def _bracket(family: _Family, usable: Sequence[TrialRecord], seqs: list[int]) -> tuple[int, int]:
    """(highest index known feasible uncapped or -1, lowest known infeasible or len)."""
    lo, hi = -1, len(seqs)
    for r in usable:
        if not r.point.unconstrained or not _in_family(r, family):
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
    ladders = gpu_ladders(grid.power_limits_w, grid.sm_clocks_mhz)
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
        for ladder in ladders:
            step = _ladder_step(ladder, server, here)
            if step is not None and step not in taken:
                return step
        best = min(_energy(r) for r in feasible)
        if best >= above_best:
            return None  # the boundary's optimum lies above this level
        above_best = best
        above_floor = _lowest_feasible_cap(feasible, grid)
    return None


def _lowest_feasible_cap(feasible: Sequence[TrialRecord], grid: SearchGrid) -> float | None:
    """Where the next level down starts: the lowest cap feasible here (clocks unlocked)."""
    caps = grid.power_limits_w
    capped = [r for r in feasible if r.point.sm_clock_mhz is None]
    if not capped:
        return None
    return max(capped, key=lambda r: caps.index(r.point.power_limit_w)).point.power_limit_w


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
        and record.point.api_server_count == family.api_server_count
    )


def _energy(record: TrialRecord) -> float:
    return record.energy_per_output_token_j or math.inf
