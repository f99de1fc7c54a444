"""The cap report: what a recommended power limit saved against the same engine configuration
without it, measured under the same server start, and whether the limit actually bound.

A cap's saving against the baseline mixes two changes (the batch and the cap). Against the
same configuration uncapped, under one server start (the CLI's power walk and a trial pod's
riders measure both there), only the cap differs: same engine, same warm caches, minutes
apart. Where no such pair exists the report says so and falls back to any uncapped
measurement of that configuration. A cap that did not bind (the GPU drew less than it most
of the window) saved nothing by itself, whatever the figures say.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.tuner._point import Point
from jouletune.tuner._records import TrialRecord, TrialState
from jouletune.tuner.spec import LatencyMetric

__all__ = ["CapReport", "cap_report"]

# The cap binds when the GPU sat at it this much of the window.
_BOUND = 0.5


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


def cap_report(
    records: Sequence[TrialRecord], point: Point, *, objective: LatencyMetric
) -> CapReport | None:
    """The report for `point`'s power limit; None when the point has no cap."""
    cap = point.power_limit_w
    if cap is None:
        return None
    uncapped_point = point.model_copy(update={"power_limit_w": None})
    capped = _complete(records, point)
    uncapped = _complete(records, uncapped_point)
    paired = {r.server_run for r in capped} & {r.server_run for r in uncapped} - {None}
    if paired:
        capped = [r for r in capped if r.server_run in paired]
        uncapped = [r for r in uncapped if r.server_run in paired]
    if not capped:
        return None
    return _report(cap, capped, uncapped, bool(paired), objective)


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
    lat_cap = _mean([r.latency_ms.get(objective.value) for r in capped])
    lat_free = _mean([r.latency_ms.get(objective.value) for r in uncapped])
    at_cap = _mean([r.figures.power_cap_bound_fraction for r in capped if r.figures])
    saving = None if j_free is None else 100.0 * (1.0 - j_cap / j_free)
    cost = None if lat_cap is None or lat_free is None else lat_cap - lat_free
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
    return text + f"; it bound only {at_cap:.0%} of the window, so the cap itself saved little."
