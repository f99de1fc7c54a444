"""The `status` of an EnergyBenchmark: the operator's only durable state.

Everything the operator needs after a restart lives here (or in the Optuna storage, when the
spec names one): the trial table says which trials ran, what they measured and which are
still running. The CRD's status schema is generated from these models, so what the operator
writes and what the API server accepts cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.tuner import PointSummary, TrialRecord
from jouletune.tuner import Recommendation as TunerRecommendation

__all__ = [
    "BenchmarkStatus",
    "Condition",
    "Phase",
    "Recommendation",
    "TrialRow",
    "now_iso",
]


def now_iso() -> str:
    """The current time as Kubernetes writes it (RFC 3339, UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Phase(StrEnum):
    """Where a benchmark is in its life."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """True once nothing more will run."""
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Condition(_Model):
    """A Kubernetes condition (metav1.Condition's fields)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = Field(default_factory=now_iso)
    observed_generation: int | None = None


class TrialRow(TrialRecord):
    """One line of the trial table: the tuner's record of a trial, plus where it ran, so a
    study can be rebuilt from the table alone (`to_record`)."""

    pod: str | None = Field(None, description="the trial pod; none for a re-proposed point")
    started_at: str | None = None
    finished_at: str | None = None
    reason: str | None = Field(None, description="why the trial failed, one word")

    @classmethod
    def of(cls, record: TrialRecord, **placement: Any) -> TrialRow:
        """The row of a tuner record; `placement` sets pod, started_at, finished_at, reason."""
        return cls.model_validate({**dict(record), **placement})

    def to_record(self) -> TrialRecord:
        """The tuner record this row stands for."""
        return TrialRecord.model_validate(
            {name: getattr(self, name) for name in TrialRecord.model_fields}
        )


class Recommendation(TunerRecommendation):
    """The study's answer (the tuner's `Recommendation`) and what adoption did with it."""

    model_config = ConfigDict(frozen=False)

    config_map: str | None = Field(None, description="ConfigMap holding the adoption patch")
    adopted: bool = Field(False, description="patched into spec.adopt.targetRef")


class BenchmarkStatus(_Model):
    """What `kubectl get ebm -o yaml` shows under `status`."""

    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    trials_running: int = 0
    trials_complete: int = 0
    trials_failed: int = 0
    trial_progress: str = Field("0/0", description="finished trials / spec.budget.maxTrials")
    best_j_per_token: float | None = Field(None, description="lowest feasible J/token so far")
    trials: list[TrialRow] = Field(default_factory=list)
    pareto_front: list[PointSummary] = Field(default_factory=list)
    recommendation: Recommendation | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if set."""
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(self, new: Condition) -> None:
        """Add or replace a condition; the transition time moves only when `status` changes."""
        old = self.condition(new.type)
        if old is not None and old.status == new.status:
            new = new.model_copy(update={"last_transition_time": old.last_transition_time})
        self.conditions = [c for c in self.conditions if c.type != new.type] + [new]

    def to_wire(self) -> dict[str, object]:
        """The JSON form written to the API: camelCase, no nulls inside (compact), and a
        top-level field that is unset is sent as null, so a merge patch removes it."""
        data: dict[str, object] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, info in type(self).model_fields.items():
            data.setdefault(info.alias or name, None)
        return data
