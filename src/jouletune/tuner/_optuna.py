"""Where jouletune meets Optuna: a `TrialRecord` in Optuna's storage and back, the sampler,
and the fingerprint a stored study is claimed with.

Optuna keeps a trial's point as its params (the `Point`'s field names), its objectives as its
values and its SLO margins as its constraints, for the sampler; everything else the record
holds travels in one user attribute, the record's own JSON. So this is the only place a
record meets Optuna, and a new record field needs no code here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, create_trial
from optuna.trial import TrialState as OptunaState

from jouletune.tuner._point import Point
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner.spec import BenchmarkSpec, LatencyMetric

__all__ = [
    "RECORD_ATTR",
    "constraints",
    "fingerprint",
    "frozen_trial",
    "record_attrs",
    "record_of",
    "running_attrs",
    "sampler",
    "values",
]

RECORD_ATTR = "record"
# What Optuna itself holds of a record: its number, its state and its point (params).
_OPTUNA_FIELDS = frozenset({"number", "state", "point"})
_TO_OPTUNA = {
    TrialState.COMPLETE: OptunaState.COMPLETE,
    TrialState.FAILED: OptunaState.FAIL,
    TrialState.RUNNING: OptunaState.RUNNING,
}
_FROM_OPTUNA = {OptunaState.COMPLETE: TrialState.COMPLETE, OptunaState.FAIL: TrialState.FAILED}
# TPE starts from random points; with budgets of ~10-30 trials its default of 10 would spend
# most of them at random.
_TPE_STARTUP_TRIALS = 4


def record_attrs(record: TrialRecord) -> dict[str, Any]:
    """The user attribute that keeps what Optuna does not (JSON)."""
    return record.model_dump(mode="json", exclude=set(_OPTUNA_FIELDS), exclude_defaults=True)


def running_attrs(role: Role, repeat: int = 0) -> dict[str, Any]:
    """The user attribute of a trial just asked for."""
    return {"role": role.value, **({"repeat": repeat} if repeat else {})}


def record_of(frozen: FrozenTrial) -> TrialRecord:
    """The record an Optuna trial stands for."""
    attrs = frozen.user_attrs.get(RECORD_ATTR) or running_attrs(Role.SEARCH)
    return TrialRecord.model_validate(
        {
            **attrs,
            "number": frozen.number,
            "state": _FROM_OPTUNA.get(frozen.state, TrialState.RUNNING),
            "point": frozen.params,
        }
    )


def values(record: TrialRecord, objective: LatencyMetric) -> list[float]:
    """Optuna's objectives of a complete record: J/output-token, then the latency statistic."""
    assert record.figures is not None, f"{record.number=} has no figures"
    latency = record.figures.latency(objective)
    assert latency is not None, f"{record.number=} lacks {objective.value}"
    return [record.figures.energy_per_output_token_j, latency]


def constraints(record: TrialRecord) -> dict[str, float]:
    """Optuna's constraints: each SLO's excess (<= 0 is feasible)."""
    return {f"slo_{metric}": excess for metric, excess in record.slo_excess_ms.items()}


def frozen_trial(
    record: TrialRecord, *, distributions: dict[str, BaseDistribution], objective: LatencyMetric
) -> FrozenTrial:
    """An Optuna trial holding `record` (to rebuild a study from records)."""
    complete = record.state is TrialState.COMPLETE
    return create_trial(
        state=_TO_OPTUNA[record.state],
        values=values(record, objective) if complete else None,
        params=record.point.params(),
        distributions=distributions,
        user_attrs={RECORD_ATTR: record_attrs(record)},
        constraints=constraints(record) or None,
    )


def sampler(spec: BenchmarkSpec) -> BaseSampler:
    """The spec's sampler, seeded. `grid` is served by the plan (every point, server by
    server), so Optuna's own sampler is never consulted for it."""
    if spec.sampler == "tpe":
        return TPESampler(seed=spec.seed, multivariate=True, n_startup_trials=_TPE_STARTUP_TRIALS)
    if spec.sampler == "nsga2":
        return NSGAIISampler(seed=spec.seed, population_size=max(4, spec.budget.max_trials // 4))
    return RandomSampler(seed=spec.seed)


# Knobs added after studies had been stored (clock locks, API-server counts).
_LATER_KNOBS = ("sm_clock_mhz", "api_server_count")


def fingerprint(spec: BenchmarkSpec, *, read_only: bool, baseline: Point) -> str:
    """What a resumed study must share with the stored one: everything that shapes results."""
    keep = spec.model_dump(
        mode="json",
        include={"model", "engine", "gpu", "search_space", "workload", "objective", "slos"},
    )
    keep["read_only"] = read_only
    keep["baseline"] = baseline.model_dump(mode="json")
    # Studies stored before a knob existed keep their fingerprint while it is not searched.
    for knob in _LATER_KNOBS:
        if not keep["search_space"][knob]:
            del keep["search_space"][knob]
        if getattr(baseline, knob) is None:
            del keep["baseline"][knob]
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]
