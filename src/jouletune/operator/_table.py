"""Building a benchmark's status from the study: the trial table, counts, front, conditions.

Pure functions of the study's records, the tuner's recommendation and where each trial ran
(its `Placement`); the control loop (`_benchmark`) writes what they build.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jouletune.operator._pods import trial_pod_name
from jouletune.operator._status import (
    BenchmarkStatus,
    Condition,
    Phase,
    Recommendation,
    TrialRow,
    now_iso,
)
from jouletune.tuner import BenchmarkSpec, Role, TrialRecord, TrialState, front, summarize_points
from jouletune.tuner import Recommendation as TunerRecommendation

__all__ = [
    "COND_ADOPTED",
    "COND_COMPLETE",
    "COND_FAILED",
    "COND_PROGRESSING",
    "COND_SPEC_VALID",
    "Placement",
    "build_status",
    "count_trials",
    "real_failures",
    "set_failed",
]

# Condition types of status.conditions.
COND_SPEC_VALID = "SpecValid"
COND_PROGRESSING = "Progressing"
COND_COMPLETE = "Complete"
COND_FAILED = "Failed"
COND_ADOPTED = "Adopted"


@dataclass
class Placement:
    """What the table says about a trial beyond the study's record: where it ran."""

    pod: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = None


def build_status(
    prior: BenchmarkStatus,
    *,
    benchmark: str,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    placements: Mapping[int, Placement],
    recommendation: TunerRecommendation,
    generation: int | None,
) -> BenchmarkStatus:
    """The status after this pass: `prior` with the table, front and answer brought up to date."""
    status = prior.model_copy(deep=True)
    count_trials(status, benchmark=benchmark, spec=spec, records=records, placements=placements)
    points = summarize_points(records, spec)
    status.pareto_front = front(points, spec)
    feasible = [p.energy_per_output_token_j for p in points if p.feasible]
    status.best_j_per_token = min(feasible) if feasible else None
    status.recommendation = Recommendation.model_validate(dict(recommendation))
    status.observed_generation = generation
    status.started_at = status.started_at or now_iso()
    status.phase = Phase.RUNNING if records else Phase.PENDING
    status.set_condition(Condition(type=COND_SPEC_VALID, status="True", reason="Valid"))
    status.set_condition(
        Condition(
            type=COND_PROGRESSING,
            status="True",
            reason="TrialsRunning" if status.trials_running else "Waiting",
            message=f"{status.trials_running} running, {status.trial_progress} measured",
        )
    )
    return status


def count_trials(
    status: BenchmarkStatus,
    *,
    benchmark: str,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    placements: Mapping[int, Placement],
) -> None:
    """Write the trial table and its counts into `status`."""
    status.trials = [_row(r, placements.get(r.number), benchmark) for r in records]
    status.trials_running = sum(r.state is TrialState.RUNNING for r in records)
    status.trials_complete = sum(
        r.state is TrialState.COMPLETE and r.duplicate_of is None for r in records
    )
    status.trials_failed = real_failures(records)
    measured = [r for r in records if r.measured and r.role is not Role.FINALIST]
    status.trial_progress = f"{len(measured)}/{spec.budget.max_trials}"


def real_failures(records: Sequence[TrialRecord]) -> int:
    """Trials whose pod failed (not answers copied from an earlier failed trial)."""
    return sum(
        r.state is TrialState.FAILED and r.duplicate_of is None and not r.interrupted
        for r in records
    )


def set_failed(status: BenchmarkStatus, reason: str, message: str) -> None:
    """Make `status` terminal: Failed, with the reason in its conditions."""
    status.phase = Phase.FAILED
    status.finished_at = now_iso()
    status.set_condition(Condition(type=COND_FAILED, status="True", reason=reason, message=message))
    status.set_condition(
        Condition(type=COND_PROGRESSING, status="False", reason=reason, message=message)
    )


def _row(record: TrialRecord, placement: Placement | None, benchmark: str) -> TrialRow:
    """A table row. Pod name and failure word follow from the record when the table that held
    them is gone (a study rebuilt from `spec.storage`)."""
    placement = placement or Placement()
    pod = placement.pod
    if pod is None and record.duplicate_of is None:
        pod = trial_pod_name(benchmark, record.number)
    reason = placement.reason
    if reason is None and record.fail_reason:
        word = record.fail_reason.split(":", 1)[0]
        reason = word if word.isalnum() else "Failed"
    return TrialRow.of(
        record,
        pod=pod,
        started_at=placement.started_at,
        finished_at=placement.finished_at,
        reason=reason,
    )
