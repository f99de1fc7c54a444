"""The cap report and the clock report: what a recommended power limit, or SM clock lock,
saved against the same engine configuration without it, measured under the same server
start, and whether the setting actually bound.

A cap's saving against the baseline mixes two changes (the batch and the cap). Against the
same configuration uncapped, under one server start (the CLI's power walk and a trial pod's
riders measure both there), only the cap differs: same engine, same warm caches, minutes
apart. Where no such pair exists the report says so and falls back to any uncapped
measurement of that configuration. A cap that did not bind (the GPU drew less than it most
of the window) saved nothing by itself, whatever the figures say. A clock lock is paired the
same way with the configuration unlocked (its cap, if any, kept); it bound when the GPU ran
above it unlocked (by more than `BINDS_RATIO`'s 5%), and a lock at or above the clock the
GPU ran at saved nothing by itself.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.tuner._boundary import BINDS_RATIO
from jouletune.tuner._point import Point
from jouletune.tuner._records import TrialRecord, TrialState
from jouletune.tuner.spec import LatencyMetric

__all__ = ["CapReport", "ClockReport", "cap_report", "clock_report"]

# The cap binds when the GPU sat at it this much of the window.
_BOUND = 0.5
# A saving this large is the cap's even where it bound less than half the window.
_NOTABLE_SAVING_PCT = 5.0


class CapReport(BaseModel):
    """A recommended power limit against the same configuration uncapped."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    power_limit_w: float
    capped_trials: list[int]
    uncapped_trials: list[int] = Field(description="the same configuration, no cap")
    same_server_start: bool = Field(
        description="every pair was measured under one server start (only the cap differs)"
    )
    capped_j_per_token: float
    uncapped_j_per_token: float | None
    saving_pct: float | None = Field(description="J/output-token the cap saved, percent")
    latency_cost_ms: float | None = Field(description="the objective's change, capped - not")
    cap_bound_fraction: float | None = Field(description="mean share of the window at the cap")
    bound: bool | None = Field(description="the cap bound at least half the window")
    sentence: str


class ClockReport(BaseModel):
    """A recommended SM clock lock against the same configuration unlocked."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    sm_clock_mhz: int
    locked_trials: list[int]
    unlocked_trials: list[int] = Field(description="the same configuration, clocks unlocked")
    same_server_start: bool = Field(
        description="every pair was measured under one server start (only the lock differs)"
    )
    locked_j_per_token: float
    unlocked_j_per_token: float | None
    saving_pct: float | None = Field(description="J/output-token the lock saved, percent")
    latency_cost_ms: float | None = Field(description="the objective's change, locked - not")
    locked_clock_mhz: float | None = Field(description="mean SM clock measured under the lock")
    unlocked_clock_mhz: float | None = Field(description="mean SM clock measured unlocked")
    bound: bool | None = Field(description="unlocked, the GPU ran more than 5% above the lock")
    sentence: str


def cap_report(
    records: Sequence[TrialRecord], point: Point, *, objective: LatencyMetric
) -> CapReport | None:
    """The report for `point`'s power limit; None when the point has no cap."""
    cap = point.power_limit_w
    if cap is None:
        return None
    pair = _paired(records, point, "power_limit_w")
    if pair is None:
        return None
    capped, uncapped, same_start = pair
    return _report(cap, capped, uncapped, same_start, objective)


def clock_report(
    records: Sequence[TrialRecord], point: Point, *, objective: LatencyMetric
) -> ClockReport | None:
    """The report for `point`'s SM clock lock; None when the point has no lock."""
    lock = point.sm_clock_mhz
    if lock is None:
        return None
    pair = _paired(records, point, "sm_clock_mhz")
    if pair is None:
        return None
    locked, unlocked, same_start = pair
    j_lock = _mean([r.energy_per_output_token_j for r in locked])
    j_free = _mean([r.energy_per_output_token_j for r in unlocked])
    assert j_lock is not None, "complete records have figures"
    saving = None if j_free is None else 100.0 * (1.0 - j_lock / j_free)
    cost = _latency_cost(locked, unlocked, objective)
    clock_free = _mean([r.figures.avg_sm_clock_mhz for r in unlocked if r.figures])
    bound = None if clock_free is None else lock < clock_free * BINDS_RATIO
    return ClockReport(
        sm_clock_mhz=lock,
        locked_trials=[r.number for r in locked],
        unlocked_trials=[r.number for r in unlocked],
        same_server_start=same_start,
        locked_j_per_token=j_lock,
        unlocked_j_per_token=j_free,
        saving_pct=saving,
        latency_cost_ms=cost,
        locked_clock_mhz=_mean([r.figures.avg_sm_clock_mhz for r in locked if r.figures]),
        unlocked_clock_mhz=clock_free,
        bound=bound,
        sentence=_clock_sentence(lock, saving, cost, clock_free, same_start, objective),
    )


def _paired(
    records: Sequence[TrialRecord], point: Point, setting: str
) -> tuple[list[TrialRecord], list[TrialRecord], bool] | None:
    """`point`'s complete measurements and those of the same point without `setting`, only
    those under a server start both share when there is one (True), else all (False); None
    when `point` has none."""
    with_it = _complete(records, point)
    without = _complete(records, point.model_copy(update={setting: None}))
    paired = {r.server_run for r in with_it} & {r.server_run for r in without} - {None}
    if paired:
        with_it = [r for r in with_it if r.server_run in paired]
        without = [r for r in without if r.server_run in paired]
    if not with_it:
        return None
    return with_it, without, bool(paired)


def _latency_cost(
    changed: Sequence[TrialRecord], unchanged: Sequence[TrialRecord], objective: LatencyMetric
) -> float | None:
    lat_changed = _mean([r.latency_ms.get(objective.value) for r in changed])
    lat_unchanged = _mean([r.latency_ms.get(objective.value) for r in unchanged])
    return None if lat_changed is None or lat_unchanged is None else lat_changed - lat_unchanged


def _complete(records: Sequence[TrialRecord], point: Point) -> list[TrialRecord]:
    return [
        r
        for r in records
        if r.point == point and r.state is TrialState.COMPLETE and r.figures and r.measured
    ]


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _report(
    cap: float,
    capped: list[TrialRecord],
    uncapped: list[TrialRecord],
    same_start: bool,
    objective: LatencyMetric,
) -> CapReport:
    j_cap = _mean([r.energy_per_output_token_j for r in capped])
    j_free = _mean([r.energy_per_output_token_j for r in uncapped])
    assert j_cap is not None, "complete records have figures"
    at_cap = _mean([r.figures.power_cap_bound_fraction for r in capped if r.figures])
    saving = None if j_free is None else 100.0 * (1.0 - j_cap / j_free)
    cost = _latency_cost(capped, uncapped, objective)
    bound = None if at_cap is None else at_cap >= _BOUND
    return CapReport(
        power_limit_w=cap,
        capped_trials=[r.number for r in capped],
        uncapped_trials=[r.number for r in uncapped],
        same_server_start=same_start,
        capped_j_per_token=j_cap,
        uncapped_j_per_token=j_free,
        saving_pct=saving,
        latency_cost_ms=cost,
        cap_bound_fraction=at_cap,
        bound=bound,
        sentence=_sentence(cap, saving, cost, at_cap, same_start, objective),
    )


def _sentence(
    cap: float,
    saving: float | None,
    cost: float | None,
    at_cap: float | None,
    same_start: bool,
    objective: LatencyMetric,
) -> str:
    if saving is None:
        return (
            f"The {cap:g} W cap was never measured against the same configuration uncapped:"
            f" its share of the saving cannot be told from the batch's."
        )
    where = "in the same server start" if same_start else "in another server start"
    latency = f", {objective.value} {cost:+.2f} ms" if cost is not None else ""
    text = (
        f"The {cap:g} W cap saved {saving:.1f}% J/token against the same configuration"
        f" uncapped {where}{latency}"
    )
    if at_cap is None:
        return text + "; whether it bound was not measured."
    if at_cap >= _BOUND:
        return text + f"; it bound {at_cap:.0%} of the window."
    if saving >= _NOTABLE_SAVING_PCT:
        # A cap can bind only in the steps that draw the most (prefill) and still save.
        return text + f"; it bound {at_cap:.0%} of the window, the steps that draw the most."
    return text + f"; it bound only {at_cap:.0%} of the window, so the cap itself saved little."


def _clock_sentence(
    lock: int,
    saving: float | None,
    cost: float | None,
    clock_free: float | None,
    same_start: bool,
    objective: LatencyMetric,
) -> str:
    if saving is None:
        return (
            f"The {lock} MHz clock lock was never measured against the same configuration"
            f" unlocked: its share of the saving cannot be told from the batch's."
        )
    where = "in the same server start" if same_start else "in another server start"
    latency = f", {objective.value} {cost:+.2f} ms" if cost is not None else ""
    text = (
        f"The {lock} MHz clock lock saved {saving:.1f}% J/token against the same configuration"
        f" unlocked {where}{latency}"
    )
    if clock_free is None:
        return text + "; whether it lowered the clock was not measured."
    if lock < clock_free * BINDS_RATIO:
        return text + f"; unlocked, the GPU ran at {clock_free:.0f} MHz."
    return (
        text + f"; unlocked, the GPU ran at only {clock_free:.0f} MHz, so the lock itself"
        " saved little."
    )
