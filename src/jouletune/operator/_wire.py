"""What travels between the operator and a trial pod.

Into the pod: a `PodPlan` (JSON in the load generator's `JOULETUNE_TRIAL` variable) says
where the engine and the exporter listen, which power limit to hold, and the `BenchConfig`
to run. Out of the pod: a `CompactResult` in the load generator's termination message, which
Kubernetes keeps for at most 4096 bytes, so it carries only the figures the search and the
status need, under the bench result's own key names (DESIGN.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ENV_PLAN",
    "TERMINATION_MESSAGE_MAX_BYTES",
    "CompactGpu",
    "CompactResult",
    "LatencyStats",
    "PodPlan",
    "ResultError",
]

ENV_PLAN = "JOULETUNE_TRIAL"
# The kubelet truncates a termination message beyond 4096 bytes (and beyond 12 KiB for all
# containers of a pod together); a truncated JSON could not be parsed at all.
TERMINATION_MESSAGE_MAX_BYTES = 4096
# Figures keep 6 significant digits: far finer than run-to-run noise, and short.
_DIGITS = 6


class ResultError(ValueError):
    """A termination message that is not a compact result."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PodPlan(_Model):
    """Everything the load generator container needs, rendered by the operator.

    Attributes:
        benchmark: `namespace/name` of the EnergyBenchmark, for logs.
        trial: the trial number.
        engine_url: the engine in the same pod.
        set_power_limit_w: a per-GPU cap the load generator sets through the sim-server's
            API before measuring and restores after (sim backend only; on real GPUs the
            exporter sidecar holds the cap, since only it has SYS_ADMIN).
        gpu_indices: the GPUs the cap applies to (those the engine's tensor parallelism uses).
        startup_timeout_s: how long to wait for the engine's /health.
        timeout_s: how long the bench may run (`spec.budget.trialTimeoutS`).
        bench: the `jouletune.loadgen.BenchConfig` to run, as JSON.
    """

    benchmark: str
    trial: Annotated[int, Field(ge=0)]
    engine_url: str
    set_power_limit_w: float | None = None
    gpu_indices: list[int] = Field(default_factory=list)
    startup_timeout_s: Annotated[float, Field(gt=0)]
    timeout_s: Annotated[float, Field(gt=0)]
    bench: dict[str, Any]


class LatencyStats(_Model):
    """One latency distribution, milliseconds (None: no samples)."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None


class CompactGpu(_Model):
    """One GPU over the window."""

    gpu: str
    energy_j: float | None = None
    avg_power_w: float | None = None
    power_limit_w: float | None = None
    power_cap_bound_fraction: float | None = None


class CompactResult(_Model):
    """A trial's outcome in under 4 KiB: figures when measured, a reason when not.

    Key names are the bench result's (DESIGN.md), so `as_bench_result()` can be told to the
    search core as is. `ok` is False when the run could not start or did not finish; `valid`
    is the bench's own verdict on the measurement (False: e.g. an energy counter that went
    backwards, or no steady state).
    """

    v: Literal[1] = 1
    ok: bool
    reason: str | None = Field(None, description="one word when not ok, e.g. EngineNotReady")
    message: str | None = None
    valid: bool | None = None
    invalid_reason: str | None = None
    completed: int | None = None
    failed: int | None = None
    duration_s: float | None = None
    window_s: tuple[float, float] | None = None
    window_output_tokens: float | None = None
    ttft_ms: LatencyStats | None = None
    tpot_ms: LatencyStats | None = None
    itl_ms: LatencyStats | None = None
    e2el_ms: LatencyStats | None = None
    request_throughput: float | None = None
    output_token_throughput: float | None = None
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None
    avg_power_w: float | None = None
    power_cap_bound_fraction: float | None = None
    avg_batch_size: float | None = None
    power_limit_w: float | None = Field(None, description="the cap held while measuring")
    gpus: list[CompactGpu] = Field(default_factory=list)

    @classmethod
    def failure(cls, reason: str, message: str) -> CompactResult:
        """A result saying why nothing was measured."""
        return cls(ok=False, reason=reason, message=_one_line(message, 400))

    @classmethod
    def from_bench(
        cls, result: Mapping[str, Any], *, power_limit_w: float | None = None
    ) -> CompactResult:
        """Keep what the search and status need of a full bench result JSON."""
        window = result.get("window") or None
        return cls(
            ok=True,
            valid=bool(result.get("valid", True)),
            invalid_reason=result.get("invalid_reason"),
            completed=result.get("completed"),
            failed=result.get("failed"),
            duration_s=_round(result.get("duration_s")),
            window_s=(_r(window["start_s"]), _r(window["end_s"])) if window else None,
            window_output_tokens=_round(result.get("window_output_tokens")),
            **{k: _stats(result.get(k)) for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")},
            **{
                k: _round(result.get(k))
                for k in (
                    "request_throughput",
                    "output_token_throughput",
                    "energy_j",
                    "energy_per_output_token_j",
                    "avg_power_w",
                    "power_cap_bound_fraction",
                    "avg_batch_size",
                )
            },
            power_limit_w=power_limit_w,
            gpus=[_gpu(g) for g in result.get("gpus") or []],
        )

    def to_message(self) -> str:
        """The termination message: compact JSON, at most 4096 bytes (per-GPU detail and
        then the message are dropped if needed, never the figures)."""
        text = self.model_dump_json(exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            text = self.model_copy(update={"gpus": []}).model_dump_json(exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            shorter = self.model_copy(update={"gpus": [], "message": None, "invalid_reason": None})
            text = shorter.model_dump_json(exclude_none=True)
        assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES, f"{len(text)=}"
        return text

    @classmethod
    def from_message(cls, text: str) -> CompactResult:
        """Parse a termination message; raise ResultError with one line if it is not one."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "message"
            raise ResultError(f"not a trial result ({where}: {first['msg']})") from None

    def as_bench_result(self) -> dict[str, Any]:
        """The figures under the bench result's keys (what `Study.tell` reads)."""
        data = self.model_dump(mode="json", exclude={"v", "ok", "reason", "message", "window_s"})
        if self.window_s is not None:
            data["window"] = {"start_s": self.window_s[0], "end_s": self.window_s[1]}
        return data


def _stats(value: Any) -> LatencyStats | None:
    if not isinstance(value, Mapping):
        return None
    return LatencyStats(**{k: _round(value.get(k)) for k in ("mean", "p50", "p90", "p99")})


def _gpu(value: Mapping[str, Any]) -> CompactGpu:
    return CompactGpu(
        gpu=str(value.get("gpu", "?")),
        energy_j=_round(value.get("energy_j")),
        avg_power_w=_round(value.get("avg_power_w")),
        power_limit_w=_round(value.get("power_limit_w")),
        power_cap_bound_fraction=_round(value.get("power_cap_bound_fraction")),
    )


def _round(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return _r(number) if math.isfinite(number) else None


def _r(number: float) -> float:
    return float(f"{number:.{_DIGITS}g}")


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def dumps_plan(plan: PodPlan) -> str:
    """The plan as the JSON the pod's environment carries."""
    return json.dumps(plan.model_dump(mode="json"), separators=(",", ":"))
