"""What crosses the search core's boundary: plans out, outcomes in, records for everyone.

`TrialPlan` is what `Study.ask()` hands a runner; `TrialOutcome` is what the runner hands
back to `Study.tell()`; `TrialRecord` is one finished (or running) trial as the CLI's report
and the operator's status show it. Records are pydantic so the operator can store them in an
object's status and rebuild a study from them (`Study.from_records`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from jouletune.tuner._space import PointConfig, ServerConfig
from jouletune.tuner.spec import LatencyMetric

__all__ = [
    "BenchFigures",
    "Role",
    "TrialOutcome",
    "TrialPlan",
    "TrialRecord",
    "TrialState",
    "figures_from_result",
]


class Role(StrEnum):
    """Why a trial runs."""

    BASELINE = "baseline"  # vLLM's defaults, no cap: what savings are measured against
    SEARCH = "search"  # proposed by the sampler, or a power step under a running server
    FINALIST = "finalist"  # a repeat of a candidate before it is recommended


class TrialState(StrEnum):
    """Where a trial stands."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """One measurement to run: a point of the space, and why.

    Attributes:
        number: the Optuna trial number; `Study.tell` takes the plan (or this number) back.
        role: baseline, search or finalist.
        point: the server configuration and power limit.
        repeat: 0 for the first measurement of a point, then 1, 2, ... for finalist repeats.
    """

    number: int
    role: Role
    point: PointConfig
    repeat: int = 0

    @property
    def server(self) -> ServerConfig:
        """The server configuration this plan needs running."""
        return self.point.server

    @property
    def power_limit_w(self) -> float | None:
        """The per-GPU cap to measure under; None leaves the limit as found."""
        return self.point.power_limit_w


@dataclass(frozen=True, kw_only=True)
class TrialOutcome:
    """What a runner measured for one plan, or why it could not.

    Attributes:
        result: the `jouletune bench` result JSON (DESIGN.md keys); None when failed.
        fail_reason: one line saying why the trial failed; None when it was measured.
        duration_s: wall-clock seconds the measurement took (drain, warm-up, window, cool-down).
        server_start_s: seconds spent starting a server for this plan; None when one that
            was already running served it.
        power_limit_w: the per-GPU limit in force while measuring, read back from the GPU.
        result_path: where the runner stored the full result and logs, if anywhere.
    """

    result: Mapping[str, Any] | None = None
    fail_reason: str | None = None
    duration_s: float = 0.0
    server_start_s: float | None = None
    power_limit_w: float | None = None
    result_path: str | None = None

    def __post_init__(self) -> None:
        assert (self.result is None) != (self.fail_reason is None), (
            f"an outcome has a result or a reason, not both or neither: {self.fail_reason=}"
        )


@dataclass(frozen=True, kw_only=True)
class BenchFigures:
    """The figures of one bench result that the search reads.

    Attributes:
        energy_per_output_token_j: joules per output token in the steady-state window.
        latency_ms: each latency statistic the spec names (objective and SLOs), milliseconds.
        avg_power_w: mean power of all the trial's GPUs together over the window, watts.
        avg_power_per_gpu_w: the highest per-GPU mean power over the window, watts.
        output_token_throughput: output tokens per second.
        power_cap_bound_fraction: fraction of the window the GPUs sat at their power limit.
        completed: requests that finished.
        failed: requests that failed.
    """

    energy_per_output_token_j: float
    latency_ms: dict[str, float]
    avg_power_w: float | None
    avg_power_per_gpu_w: float | None
    output_token_throughput: float | None
    power_cap_bound_fraction: float | None
    completed: int
    failed: int


def figures_from_result(
    result: Mapping[str, Any], *, metrics: set[LatencyMetric], num_gpus: int
) -> BenchFigures:
    """Read the figures the search needs from a bench result.

    Raises:
        ValueError: the result lacks a figure the search needs (the trial is then failed
            with this message as its reason).
    """
    if result.get("partial"):
        raise ValueError("the server was lost during the measurement")
    if result.get("valid") is False:
        raise ValueError(
            f"invalid measurement: {result.get('invalid_reason') or 'no reason given'}"
        )
    energy = _finite(result.get("energy_per_output_token_j"))
    if energy is None or energy <= 0:
        raise ValueError("the bench measured no energy per output token")
    latency: dict[str, float] = {}
    for metric in sorted(metrics):
        family, stat = metric.result_key
        value = _finite((result.get(family) or {}).get(stat))
        if value is None:
            raise ValueError(f"the bench result has no {family}.{stat}")
        latency[metric.value] = value
    avg_power_w = _finite(result.get("avg_power_w"))
    return BenchFigures(
        energy_per_output_token_j=energy,
        latency_ms=latency,
        avg_power_w=avg_power_w,
        avg_power_per_gpu_w=_per_gpu_power_w(result, avg_power_w, num_gpus),
        output_token_throughput=_finite(result.get("output_token_throughput")),
        power_cap_bound_fraction=_finite(result.get("power_cap_bound_fraction")),
        completed=int(result.get("completed") or 0),
        failed=int(result.get("failed") or 0),
    )


class TrialRecord(BaseModel):
    """One trial as reports and the operator's status show it; units in field names."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    number: int
    role: Role
    state: TrialState
    repeat: int = 0
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int | None = None
    power_limit_w: float | None = None
    measured_power_limit_w: float | None = None
    energy_per_output_token_j: float | None = None
    latency_ms: dict[str, float] = {}
    slo_excess_ms: dict[str, float] = {}
    feasible: bool | None = None
    avg_power_w: float | None = None
    avg_power_per_gpu_w: float | None = None
    output_token_throughput: float | None = None
    power_cap_bound_fraction: float | None = None
    completed: int | None = None
    failed_requests: int | None = None
    duration_s: float = 0.0
    server_start_s: float | None = None
    fail_reason: str | None = None
    result_path: str | None = None
    duplicate_of: int | None = None
    interrupted: bool = False

    @property
    def point(self) -> PointConfig:
        """The point this trial measured."""
        return PointConfig.from_fields(
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            power_limit_w=self.power_limit_w,
        )

    @property
    def gpu_s(self) -> float:
        """GPU-seconds this trial held: its wall time (server start included) times its GPUs."""
        return (self.duration_s + (self.server_start_s or 0.0)) * self.tensor_parallel_size

    @property
    def measured(self) -> bool:
        """Ran to an end here: not running, not interrupted, not answered from another."""
        return (
            self.state is not TrialState.RUNNING
            and not self.interrupted
            and self.duplicate_of is None
        )


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _per_gpu_power_w(
    result: Mapping[str, Any], avg_power_w: float | None, num_gpus: int
) -> float | None:
    """The busiest GPU's mean power: a cap binds per GPU, so that is what to compare with."""
    gpus = result.get("gpus")
    if isinstance(gpus, list):
        per_gpu = [_finite(g.get("avg_power_w")) for g in gpus if isinstance(g, Mapping)]
        known = [p for p in per_gpu if p is not None]
        if known:
            return max(known)
    return None if avg_power_w is None else avg_power_w / max(num_gpus, 1)
