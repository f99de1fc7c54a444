"""The `status` of an EnergyBenchmark: the operator's only durable state.

Everything the operator needs after a restart lives here (or in the Optuna storage, when the
spec names one): the trial table says which trials ran, what they measured and which are
still running. The CRD's status schema is generated from these models, so what the operator
writes and what the API server accepts cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.tuner import PointConfig, Role, TrialRecord
from jouletune.tuner import TrialState as RecordState

__all__ = [
    "BenchmarkStatus",
    "Condition",
    "FrontPoint",
    "Phase",
    "Recommendation",
    "TrialConfig",
    "TrialRow",
    "TrialState",
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


class TrialState(StrEnum):
    """Where one trial is: its pod runs, or its result has been read."""

    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


_WIRE_STATE = {
    RecordState.RUNNING: TrialState.RUNNING,
    RecordState.COMPLETE: TrialState.COMPLETE,
    RecordState.FAILED: TrialState.FAILED,
}
_RECORD_STATE = {wire: record for record, wire in _WIRE_STATE.items()}


class Condition(_Model):
    """A Kubernetes condition (metav1.Condition's fields)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = Field(default_factory=now_iso)
    observed_generation: int | None = None


class TrialConfig(_Model):
    """One point of the search space, as a trial pod runs it."""

    tensor_parallel_size: Annotated[int, Field(ge=1)]
    max_num_seqs: Annotated[int, Field(ge=1)]
    max_num_batched_tokens: int | None = None
    power_limit_w: float | None = Field(None, description="per-GPU cap; null leaves it as found")

    @classmethod
    def from_point(cls, point: PointConfig) -> TrialConfig:
        """The wire form of a tuner point."""
        return cls(
            tensor_parallel_size=point.server.tensor_parallel_size,
            max_num_seqs=point.server.max_num_seqs,
            max_num_batched_tokens=point.server.max_num_batched_tokens,
            power_limit_w=point.power_limit_w,
        )

    def point(self) -> PointConfig:
        """The tuner point this configuration is."""
        return PointConfig.from_fields(
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            power_limit_w=self.power_limit_w,
        )


class TrialRow(_Model):
    """One line of the trial table: what ran, and what it measured.

    The fields of the tuner's `TrialRecord` (camelCase) plus where the trial ran, so a study
    can be rebuilt from the table alone (`to_record`/`from_record`).
    """

    number: Annotated[int, Field(ge=0)]
    state: TrialState
    role: str = Field(description="baseline, search or finalist")
    repeat: int = 0
    config: TrialConfig
    pod: str | None = Field(None, description="the trial pod; none for a re-proposed point")
    started_at: str | None = None
    finished_at: str | None = None
    j_per_token: float | None = Field(None, description="joules per output token, steady state")
    latency_ms: dict[str, float] = Field(
        default_factory=dict, description="objective and SLO statistics, milliseconds"
    )
    slo_excess_ms: dict[str, float] = Field(
        default_factory=dict, description="statistic minus its SLO bound (<= 0 meets it)"
    )
    feasible: bool | None = Field(None, description="met every SLO")
    measured_power_limit_w: float | None = None
    avg_power_w: float | None = None
    avg_power_per_gpu_w: float | None = None
    output_token_throughput: float | None = None
    power_cap_bound_fraction: float | None = Field(
        None, description="fraction of the window the GPUs spent at the cap"
    )
    completed: int | None = None
    failed_requests: int | None = None
    duration_s: float = 0.0
    server_start_s: float | None = None
    reason: str | None = Field(None, description="why the trial failed, one word")
    fail_reason: str | None = Field(None, description="why the trial failed, one line")
    duplicate_of: int | None = Field(None, description="answered from this earlier trial")
    interrupted: bool = False

    @classmethod
    def from_record(cls, record: TrialRecord, **placement: Any) -> TrialRow:
        """The row of a tuner record; `placement` sets pod, startedAt, finishedAt, reason."""
        # Only the fields this row knows: a field the tuner adds later is dropped (and the
        # test that compares both models fails) rather than breaking the operator.
        data = record.model_dump(include=set(_SHARED_FIELDS | _CONFIG_FIELDS))
        config = TrialConfig(
            tensor_parallel_size=data.pop("tensor_parallel_size"),
            max_num_seqs=data.pop("max_num_seqs"),
            max_num_batched_tokens=data.pop("max_num_batched_tokens"),
            power_limit_w=data.pop("power_limit_w"),
        )
        return cls(
            **data,
            **placement,
            state=_WIRE_STATE[record.state],
            role=record.role.value,
            config=config,
            j_per_token=record.energy_per_output_token_j,
        )

    def to_record(self) -> TrialRecord:
        """The tuner record this row stands for."""
        data = self.model_dump(include=set(_SHARED_FIELDS))
        return TrialRecord(
            **data,
            **self.config.model_dump(),
            state=_RECORD_STATE[self.state],
            role=Role(self.role),
            energy_per_output_token_j=self.j_per_token,
        )


# TrialRecord fields a row keeps under the same name, and those it keeps in `config`.
_CONFIG_FIELDS = frozenset(
    {"tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "power_limit_w"}
)
_SHARED_FIELDS = frozenset(TrialRow.model_fields) & frozenset(TrialRecord.model_fields) - {
    "state",
    "role",
}


class FrontPoint(_Model):
    """One configuration on the energy/latency Pareto front (means over its measurements)."""

    config: TrialConfig
    summary: str
    trials: list[int]
    j_per_token: float
    latency_ms: float


class Recommendation(_Model):
    """The study's answer: the configuration to adopt, what it measured and what it saves."""

    verdict: str = Field(description="recommended, infeasible, failed or incomplete")
    message: str
    config: TrialConfig | None = None
    summary: str | None = Field(None, description="one line, e.g. `tp1 seqs64 400W`")
    trials: list[int] = Field(default_factory=list, description="its measurements")
    vllm_args: list[str] = Field(
        default_factory=list, description="`vllm serve` flags after the model"
    )
    power_limit_w: float | None = None
    j_per_token: float | None = None
    latency_metric: str | None = None
    latency_ms: float | None = None
    baseline_j_per_token: float | None = None
    saving_pct: float | None = Field(None, description="fewer joules than the baseline, %")
    latency_cost_ms: float | None = Field(None, description="objective latency minus baseline's")
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
    pareto_front: list[FrontPoint] = Field(default_factory=list)
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
