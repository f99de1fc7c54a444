"""The finalists: the points re-measured before one is recommended, and which repeat is next.

Pure functions of the records, like the boundary search (`_boundary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jouletune.tuner._point import Point
from jouletune.tuner._records import Role, TrialRecord, TrialState

__all__ = ["MAX_FINALISTS", "finalist_points", "next_finalist"]

# The lowest-energy feasible points re-measured before one is recommended. Three covers points
# whose single measurements lie within noise of each other without doubling the study's cost.
MAX_FINALISTS = 3


def finalist_points(measured: Sequence[TrialRecord], *, baseline: Point) -> list[Point]:
    """The baseline first, then up to MAX_FINALISTS lowest-energy feasible points of the search,
    then each capped or locked finalist's twin without its cap or lock; none at all when
    nothing is feasible (repeats could not change the verdict).

    The twins run in the same server start just before their finalist (`Point.run_order`), so
    the cap and clock reports can tell what the cap or lock saved by itself, against the same
    engine configuration, however the search reached the point.
    """
    searched = [r for r in measured if r.role is not Role.FINALIST]
    feasible = [r for r in searched if r.feasible and r.state is TrialState.COMPLETE]
    feasible.sort(key=lambda r: (r.energy_per_output_token_j or math.inf, r.number))
    points = [baseline]
    for record in feasible:
        if len(points) > MAX_FINALISTS:
            break
        if record.point not in points:
            points.append(record.point)
    if len(points) == 1 or not any(r.role is Role.BASELINE for r in searched):
        return []
    return points + [t for t in dict.fromkeys(_twins(points)) if t not in points]


def _twins(points: Sequence[Point]) -> list[Point]:
    twins = []
    for point in points:
        if point.power_limit_w is not None:
            twins.append(point.model_copy(update={"power_limit_w": None}))
        if point.sm_clock_mhz is not None:
            twins.append(point.model_copy(update={"sm_clock_mhz": None}))
    return twins


def next_finalist(
    records: Sequence[TrialRecord], finalists: Sequence[Point], *, repeats: int
) -> tuple[Point, int] | None:
    """(point, repeat number) of the next finalist measurement, or None when all are done."""
    done: dict[Point, int] = {}
    for record in records:
        if record.role is Role.FINALIST and not record.interrupted:
            done[record.point] = done.get(record.point, 0) + 1
    # Server by server, caps from high to low: the order with the fewest restarts.
    for point in sorted(finalists, key=Point.run_order):
        if done.get(point, 0) < repeats:
            return point, done.get(point, 0) + 1
    return None
