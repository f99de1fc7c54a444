"""The `status` of an EnergyBenchmark: the operator's only durable state.

Everything the operator needs after a restart lives here (or in the Optuna storage, when the
spec names one): the trial table says which trials ran, what they measured and which are
still running. The CRD's status schema is generated from these models, so what the operator
writes and what the API server accepts cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

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

    def label(self) -> str:
        """Short human form, e.g. `tp1 seqs64 400W`."""
        text = f"tp{self.tensor_parallel_size} seqs{self.max_num_seqs}"
        if self.max_num_batched_tokens is not None:
            text += f" mbt{self.max_num_batched_tokens}"
        cap = "uncapped" if self.power_limit_w is None else f"{self.power_limit_w:g}W"
        return f"{text} {cap}"


class TrialRow(_Model):
    """One line of the trial table: what ran, and what it measured."""

    number: Annotated[int, Field(ge=0)]
    state: TrialState
    config: TrialConfig
    pod: str
    role: str | None = Field(None, description="baseline, search or repeat")
    started_at: str | None = None
    finished_at: str | None = None
    j_per_token: float | None = Field(None, description="joules per output token, steady state")
    latency_ms: dict[str, float] = Field(
        default_factory=dict, description="objective and SLO statistics, milliseconds"
    )
    avg_power_w: float | None = None
    feasible: bool | None = Field(None, description="met every SLO")
    reason: str | None = Field(None, description="why the trial failed (one word)")
    message: str | None = None


class FrontPoint(_Model):
    """One configuration on the energy/latency Pareto front."""

    trial: int
    config: TrialConfig
    j_per_token: float
    latency_ms: float


class Recommendation(_Model):
    """The configuration to adopt, with what it measured and what it saves."""

    trial: int
    config: TrialConfig
    summary: str = Field(description="one line, e.g. `tp1 seqs64 400W`")
    vllm_args: list[str] = Field(description="`vllm serve` flags that select this configuration")
    power_limit_w: float | None = None
    j_per_token: float
    latency_metric: str
    latency_ms: float
    baseline_j_per_token: float | None = None
    saving_ratio: float | None = Field(None, description="1 - J/token / baseline J/token")
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
        """The JSON form written to the API (camelCase, nulls kept so merge-patch clears)."""
        return self.model_dump(mode="json", by_alias=True)
