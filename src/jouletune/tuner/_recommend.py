"""From measured trials to an answer: points, the Pareto front, the recommendation.

A point's figures are the means over every measurement of it (search and finalist repeats);
its spread is reported beside them. A point is feasible when each SLO statistic's mean meets
its bound. The recommendation is the feasible finalist with the lowest mean J/output-token;
its saving is measured against the baseline's mean, the baseline being re-measured as often
as the finalists so both sides carry the same noise.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from jouletune.tuner._pareto import pareto_front
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner._space import PointConfig, serve_args
from jouletune.tuner.spec import BenchmarkSpec

__all__ = [
    "Artifacts",
    "PointSummary",
    "Recommendation",
    "Verdict",
    "artifacts",
    "front",
    "recommend",
    "summarize_points",
]

Verdict = Literal["recommended", "infeasible", "failed", "incomplete"]
# How many of the nearest misses an infeasible verdict lists.
_CLOSEST = 3


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PointSummary(_Model):
    """One point of the space over all its measurements; units in field names."""

    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int | None
    power_limit_w: float | None
    label: str
    runs: int
    trials: list[int]
    energy_per_output_token_j: float
    energy_per_output_token_j_min: float
    energy_per_output_token_j_max: float
    energy_spread_pct: float
    latency_ms: dict[str, float]
    slo_excess_ms: dict[str, float]
    feasible: bool
    avg_power_per_gpu_w: float | None
    output_token_throughput: float | None
    is_baseline: bool

    @property
    def point(self) -> PointConfig:
        """The point summarised."""
        return _point_of(self)


class Artifacts(_Model):
    """The recommendation, ready to adopt."""

    vllm_serve_args: list[str]
    vllm_serve_command: str
    power_limit_w: float | None
    power_limit_command: str | None
    kubernetes_container: dict[str, Any]


class Recommendation(_Model):
    """The study's answer (`recommendation.json`).

    `saving_pct` is the cut in J/output-token against the baseline (positive = fewer joules);
    `latency_cost_ms`/`latency_cost_pct` is what the objective's latency statistic pays for it
    (positive = slower).
    """

    verdict: Verdict
    message: str
    model: str
    objective: str
    slos: dict[str, float]
    recommended: PointSummary | None
    baseline: PointSummary | None
    saving_pct: float | None
    latency_cost_ms: float | None
    latency_cost_pct: float | None
    artifacts: Artifacts | None
    finalists: list[PointSummary]
    closest: list[PointSummary]
    trials_measured: int
    trials_failed: int
    server_starts: int
    gpu_s: float


def summarize_points(records: Sequence[TrialRecord], spec: BenchmarkSpec) -> list[PointSummary]:
    """One summary per point that has at least one complete measurement, in first-measured
    order."""
    by_point: dict[PointConfig, list[TrialRecord]] = {}
    for record in records:
        if record.measured and record.state is TrialState.COMPLETE:
            by_point.setdefault(record.point, []).append(record)
    return [_summarize(point, group, spec) for point, group in by_point.items()]


def front(points: Sequence[PointSummary], spec: BenchmarkSpec) -> list[PointSummary]:
    """The feasible points no other feasible point beats in both J/token and latency, by
    ascending J/token."""
    objective = spec.objective.value
    feasible = [p for p in points if p.feasible]
    on_front = pareto_front(
        feasible, lambda p: (p.energy_per_output_token_j, p.latency_ms[objective])
    )
    return sorted(on_front, key=lambda p: p.energy_per_output_token_j)


def recommend(
    *,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    finalists: Sequence[PointConfig],
    done: bool,
) -> Recommendation:
    """The verdict, the recommended point and its saving, or the nearest misses."""
    points = summarize_points(records, spec)
    by_point = {p.point: p for p in points}
    baseline = next((p for p in points if p.is_baseline), None)
    measured = [r for r in records if r.measured and r.role is not Role.FINALIST]
    common: dict[str, Any] = {
        "model": spec.model,
        "objective": spec.objective.value,
        "slos": {s.metric.value: s.max_ms for s in spec.slos},
        "baseline": baseline,
        "trials_measured": len(measured),
        "trials_failed": sum(r.state is TrialState.FAILED for r in measured),
        "server_starts": sum(r.server_start_s is not None for r in records),
        "gpu_s": round(sum(r.gpu_s for r in records), 3),
    }
    candidates = [by_point[f] for f in finalists if f in by_point] or [
        p for p in points if p.feasible
    ]
    best = min(
        (p for p in candidates if p.feasible),
        key=lambda p: p.energy_per_output_token_j,
        default=None,
    )
    if best is None:
        return _no_answer(points, done=done, spec=spec, common=common)
    saving, cost_ms, cost_pct = _against_baseline(best, baseline, spec)
    return Recommendation(
        verdict="recommended" if done else "incomplete",
        message=_message(best, saving, cost_ms, spec, done=done),
        recommended=best,
        saving_pct=saving,
        latency_cost_ms=cost_ms,
        latency_cost_pct=cost_pct,
        artifacts=artifacts(best.point, spec),
        finalists=[by_point[f] for f in finalists if f in by_point],
        closest=[],
        **common,
    )


def artifacts(point: PointConfig, spec: BenchmarkSpec) -> Artifacts:
    """The `vllm serve` command line, the power-limit command and a Kubernetes container."""
    args = serve_args(point.server, spec)
    cap = point.power_limit_w
    gpus = ",".join(str(i) for i in range(point.server.tensor_parallel_size))
    container: dict[str, Any] = {
        "name": "vllm",
        "image": spec.engine.image,
        # The vllm/vllm-openai image's entrypoint is `vllm serve`; args start at the model.
        "args": [spec.model, *args],
        "resources": {"limits": {"nvidia.com/gpu": str(point.server.tensor_parallel_size)}},
    }
    return Artifacts(
        vllm_serve_args=args,
        vllm_serve_command=shlex.join(["vllm", "serve", spec.model, *args]),
        power_limit_w=cap,
        power_limit_command=None if cap is None else f"sudo nvidia-smi -i {gpus} -pl {cap:g}",
        kubernetes_container=container,
    )


def _summarize(
    point: PointConfig, group: Sequence[TrialRecord], spec: BenchmarkSpec
) -> PointSummary:
    energies = [r.energy_per_output_token_j for r in group if r.energy_per_output_token_j]
    mean_j = statistics.fmean(energies)
    metrics = sorted({k for r in group for k in r.latency_ms})
    latency = {
        m: statistics.fmean(r.latency_ms[m] for r in group if m in r.latency_ms) for m in metrics
    }
    excess = {s.metric.value: latency[s.metric.value] - s.max_ms for s in spec.slos}
    powers = [r.avg_power_per_gpu_w for r in group if r.avg_power_per_gpu_w is not None]
    tputs = [r.output_token_throughput for r in group if r.output_token_throughput is not None]
    return PointSummary(
        tensor_parallel_size=point.server.tensor_parallel_size,
        max_num_seqs=point.server.max_num_seqs,
        max_num_batched_tokens=point.server.max_num_batched_tokens,
        power_limit_w=point.power_limit_w,
        label=point.label(),
        runs=len(group),
        trials=[r.number for r in group],
        energy_per_output_token_j=mean_j,
        energy_per_output_token_j_min=min(energies),
        energy_per_output_token_j_max=max(energies),
        energy_spread_pct=100.0 * (max(energies) - min(energies)) / mean_j,
        latency_ms=latency,
        slo_excess_ms=excess,
        feasible=all(v <= 0 for v in excess.values()),
        avg_power_per_gpu_w=statistics.fmean(powers) if powers else None,
        output_token_throughput=statistics.fmean(tputs) if tputs else None,
        is_baseline=any(r.role is Role.BASELINE for r in group),
    )


def _against_baseline(
    best: PointSummary, baseline: PointSummary | None, spec: BenchmarkSpec
) -> tuple[float | None, float | None, float | None]:
    if baseline is None:
        return None, None, None
    metric = spec.objective.value
    saving = 100.0 * (1.0 - best.energy_per_output_token_j / baseline.energy_per_output_token_j)
    cost_ms = best.latency_ms[metric] - baseline.latency_ms[metric]
    cost_pct = 100.0 * cost_ms / baseline.latency_ms[metric]
    return saving, cost_ms, cost_pct


def _message(
    best: PointSummary,
    saving: float | None,
    cost_ms: float | None,
    spec: BenchmarkSpec,
    *,
    done: bool,
) -> str:
    head = "recommended" if done else "best so far (study not finished)"
    text = f"{head}: {best.label} at {best.energy_per_output_token_j:.4g} J/output-token"
    if saving is not None and cost_ms is not None:
        fewer = f"{saving:.1f}% fewer" if saving >= 0 else f"{-saving:.1f}% more"
        text += (
            f", {fewer} joules per token than the baseline, "
            f"{spec.objective.value} {cost_ms:+.2f} ms"
        )
    return text


def _no_answer(
    points: Sequence[PointSummary], *, done: bool, spec: BenchmarkSpec, common: dict[str, Any]
) -> Recommendation:
    if not points:
        verdict: Verdict = "failed" if done else "incomplete"
        message = "no trial was measured successfully; see the failed trials' reasons"
    else:
        verdict = "infeasible" if done else "incomplete"
        slos = ", ".join(f"{s.metric.value} <= {s.max_ms:g} ms" for s in spec.slos)
        message = f"no measured configuration meets the SLO ({slos}); the closest are listed"
    closest = sorted(points, key=_relative_excess)[:_CLOSEST]
    return Recommendation(
        verdict=verdict,
        message=message,
        recommended=None,
        saving_pct=None,
        latency_cost_ms=None,
        latency_cost_pct=None,
        artifacts=None,
        finalists=[],
        closest=closest,
        **common,
    )


def _relative_excess(point: PointSummary) -> float:
    """How far a point misses its worst SLO, as a fraction of that bound."""
    return max((v / (point.latency_ms[k] - v) for k, v in point.slo_excess_ms.items()), default=0.0)


def _point_of(summary: PointSummary) -> PointConfig:
    return PointConfig.from_params(
        {
            "tensor_parallel_size": summary.tensor_parallel_size,
            "max_num_seqs": summary.max_num_seqs,
            "max_num_batched_tokens": summary.max_num_batched_tokens,
            "power_limit_w": summary.power_limit_w,
        }
    )
