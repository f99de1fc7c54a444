"""Reading finished trial pods into the study: each pod's trial, then its riders.

A pod measured its trial's point and possibly riders (lower caps under the same engine
start). Its trial is told by number; each rider it measured becomes a trial of its own
(`Study.tell_extra`), placed in the same pod.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from jouletune.operator._config import OperatorConfig
from jouletune.operator._outcome import PodOutcome, Timeouts, classify_pod, parse_time_s
from jouletune.operator._pods import points_of_pod, trial_deadline_s, trial_pod_name
from jouletune.operator._status import now_iso
from jouletune.operator._table import Placement
from jouletune.tuner import BenchmarkSpec, Study, TrialOutcome, TrialRecord, TrialState

__all__ = ["Told", "harvest"]


@dataclass(frozen=True, kw_only=True)
class Told:
    """One trial just told to the study.

    Attributes:
        record: the study's record of it.
        placement: where it ran (its finish time and failure word set).
        duration_s: how long its measurement (or its pod, for a failed pod) took.
    """

    record: TrialRecord
    placement: Placement
    duration_s: float


def harvest(
    study: Study,
    pods: Mapping[str, Mapping[str, Any]],
    *,
    benchmark: str,
    spec: BenchmarkSpec,
    config: OperatorConfig,
    placements: MutableMapping[int, Placement],
) -> tuple[list[Told], list[str]]:
    """Tell the study every finished pod's outcome: (the trials told, the pods to delete)."""
    now_s = time.time()
    told: list[Told] = []
    finished: list[str] = []
    for record in study.records():
        if record.state is not TrialState.RUNNING:
            continue
        pod = pods.get(trial_pod_name(benchmark, record.number))
        if pod is None:
            continue
        timeouts = Timeouts(
            unschedulable_s=config.unschedulable_timeout_s,
            trial_s=trial_deadline_s(spec, len(points_of_pod(pod) or [None]), config),
        )
        outcome = classify_pod(pod, now_s=now_s, timeouts=timeouts)
        if outcome.state == "running":
            continue
        told += _tell(study, record, outcome, pod, placements)
        finished.append(pod["metadata"]["name"])
    return told, finished


def _tell(
    study: Study,
    record: TrialRecord,
    outcome: PodOutcome,
    pod: Mapping[str, Any],
    placements: MutableMapping[int, Placement],
) -> list[Told]:
    placement = placements.setdefault(record.number, Placement())
    started_s = parse_time_s(placement.started_at) or parse_time_s(
        pod["metadata"].get("creationTimestamp")
    )
    duration_s = 0.0 if started_s is None else time.time() - started_s
    if outcome.state != "done":
        reason = f"{outcome.reason}: {outcome.message}"
        failed = study.tell(record.number, TrialOutcome(fail_reason=reason, duration_s=duration_s))
        return [_placed(failed, placement, outcome.reason, duration_s)]
    assert outcome.result is not None, "a done outcome carries its result"
    first, *riders = outcome.result.trials
    told = [
        _placed(
            study.tell(record.number, first.outcome(duration_s=duration_s, pod=placement.pod)),
            placement,
            None,
            first.duration_s,
        )
    ]
    for rider in riders:
        extra = study.tell_extra(rider.point, rider.outcome(pod=placement.pod), role=record.role)
        ridden = placements.setdefault(extra.number, Placement())
        ridden.pod, ridden.started_at = placement.pod, placement.started_at
        told.append(_placed(extra, ridden, None, rider.duration_s))
    return told


def _placed(
    record: TrialRecord, placement: Placement, reason: str | None, duration_s: float
) -> Told:
    placement.finished_at = now_iso()
    if record.state is TrialState.FAILED:
        # A result the study could not use fails too; keep the pod's word when it had one.
        placement.reason = reason or (record.fail_reason or "").split(":", 1)[0] or "Failed"
    return Told(record=record, placement=placement, duration_s=duration_s)
