"""From measured trials to an answer: points, the Pareto front, the recommendation.

A point's figures are the means over every measurement of it (search and finalist repeats);
its spread is reported beside them. A point is feasible when each SLO statistic's mean meets
its bound. The recommendation is the feasible finalist with the lowest mean J/output-token;
its saving is measured against the baseline's mean, the baseline being re-measured as often
as the finalists so both sides carry the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.tuner._capreport import CapReport, ClockReport, cap_report, clock_report
from jouletune.tuner._figures import TrialFigures
from jouletune.tuner._pareto import pareto_front
from jouletune.tuner._point import Point
from jouletune.tuner._provenance import (
    PREDICTED_API_SERVER_CAVEAT,
    PREDICTED_ITL_CAVEAT,
    PREDICTED_TTFT_CAVEAT,
    Provenance,
    SimProfile,
    common_provenance,
    setting_caveat,
)
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner._space import serve_args
from jouletune.tuner.spec import BenchmarkSpec

__all__ = [
    "Artifacts",
    "ContainerPatch",
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
_GPU_RESOURCE = "nvidia.com/gpu"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)


class PointSummary(_Model):
    """One point of the space over all its measurements; units in field names.

    Attributes:
        point: the point.
        label: its short form, e.g. `tp1 seqs64 400W`.
        runs: how many complete measurements it has.
        trials: their trial numbers.
        figures: each figure's mean over the runs.
        energy_per_output_token_j_min: the lowest J/output-token of the runs.
        energy_per_output_token_j_max: the highest.
        energy_spread_pct: (max - min) / mean, percent.
        slo_excess_ms: each SLO statistic's mean minus its bound (<= 0 meets it).
        feasible: every SLO statistic's mean meets its bound.
        is_baseline: the baseline's point.
        provenance: measured or predicted by the simulator, and on what (a predicted run
            makes the mean a prediction); None for records that predate provenance.
    """

    point: Point
    label: str
    runs: int
    trials: list[int]
    figures: TrialFigures
    energy_per_output_token_j_min: float
    energy_per_output_token_j_max: float
    energy_spread_pct: float
    slo_excess_ms: dict[str, float]
    feasible: bool
    is_baseline: bool
    provenance: Provenance | None = None

    @property
    def energy_per_output_token_j(self) -> float:
        """Mean J/output-token over the runs."""
        return self.figures.energy_per_output_token_j


class ContainerPatch(_Model):
    """A Kubernetes container fragment running the recommendation (the vLLM image's
    entrypoint is `vllm serve`, so args start at the model)."""

    name: str
    image: str
    args: list[str]
    resources: dict[str, dict[str, str]] = Field(
        description="limits and requests: the GPUs the engine uses"
    )


class Artifacts(_Model):
    """The recommendation, ready to adopt."""

    vllm_serve_args: list[str] = Field(description="`vllm serve` flags after the model")
    vllm_serve_command: str
    power_limit_w: float | None = None
    power_limit_command: str | None = None
    sm_clock_mhz: int | None = Field(None, description="the SM clock to lock the GPUs at, MHz")
    sm_clock_lock_command: str | None = Field(
        None, description="`nvidia-smi -lgc T,T`; `nvidia-smi -rgc` undoes it"
    )
    kubernetes_container: ContainerPatch


class Recommendation(_Model):
    """The study's answer (`recommendation.json`).

    `saving_pct` is the cut in J/output-token against the baseline (positive = fewer joules);
    `latency_cost_ms`/`latency_cost_pct` is what the objective's latency statistic pays for it
    (positive = slower). `provenance` says whether those figures were measured or predicted
    by the simulator; `caveats` are what a reader must know before adopting the answer.
    """

    verdict: Verdict
    message: str
    model: str
    objective: str
    slos: dict[str, float]
    recommended: PointSummary | None = None
    baseline: PointSummary | None = None
    baseline_source: str = Field(
        "", description="where the baseline came from: the user's flags or the engine's defaults"
    )
    saving_pct: float | None = None
    latency_cost_ms: float | None = None
    latency_cost_pct: float | None = None
    cap_report: CapReport | None = Field(
        None, description="the recommended cap against the same configuration uncapped"
    )
    clock_report: ClockReport | None = Field(
        None, description="the recommended clock lock against the same configuration unlocked"
    )
    artifacts: Artifacts | None = None
    finalists: list[PointSummary] = Field(default_factory=list)
    closest: list[PointSummary] = Field(default_factory=list)
    trials_measured: int = 0
    trials_failed: int = 0
    server_starts: int = 0
    gpu_s: float = 0.0
    provenance: Provenance | None = Field(
        None, description="measured (GPU, driver, engine) or predicted by the simulator"
    )
    caveats: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        """The message, then where its figures come from and the caveats, one per line."""
        lines = [self.message]
        if self.provenance is not None:
            lines.append(self.provenance.sentence())
        elif self.recommended or self.baseline or self.closest:  # figures of unknown origin
            lines.append("origin unknown: these trials carry no provenance")
        return "\n".join([*lines, *self.caveats])


def summarize_points(records: Sequence[TrialRecord], spec: BenchmarkSpec) -> list[PointSummary]:
    """One summary per point that has at least one complete measurement, in first-measured
    order."""
    by_point: dict[Point, list[TrialRecord]] = {}
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
        feasible, lambda p: (p.energy_per_output_token_j, p.figures.latency_ms[objective])
    )
    return sorted(on_front, key=lambda p: p.energy_per_output_token_j)


def recommend(
    *,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    finalists: Sequence[Point],
    done: bool,
    baseline_source: str = "",
    sim_profile: SimProfile | None = None,
) -> Recommendation:
    """The verdict, the recommended point and its saving, or the nearest misses;
    `sim_profile` is the GPU profile the simulator ran with, if any."""
    points = summarize_points(records, spec)
    by_point = {p.point: p for p in points}
    baseline = next((p for p in points if p.is_baseline), None)
    measured = [r for r in records if r.measured and r.role is not Role.FINALIST]
    common: dict[str, Any] = {
        "model": spec.model,
        "objective": spec.objective.value,
        "slos": {s.metric.value: s.max_ms for s in spec.slos},
        "baseline": baseline,
        "baseline_source": baseline_source,
        "trials_measured": len(measured),
        "trials_failed": sum(r.state is TrialState.FAILED for r in measured),
        "server_starts": sum(
            r.server_start_s is not None and r.duplicate_of is None for r in records
        ),
        "gpu_s": round(sum(r.gpu_s for r in records), 3),
        "provenance": common_provenance(r.provenance for r in measured if r.figures),
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
    provenance = common_provenance([best.provenance, baseline.provenance if baseline else None])
    common["provenance"] = provenance or common["provenance"]
    return Recommendation(
        verdict="recommended" if done else "incomplete",
        message=_message(best, saving, cost_ms, spec, done=done),
        recommended=best,
        saving_pct=saving,
        latency_cost_ms=cost_ms,
        latency_cost_pct=cost_pct,
        cap_report=cap_report(records, best.point, objective=spec.objective),
        clock_report=clock_report(records, best.point, objective=spec.objective),
        artifacts=artifacts(best.point, spec),
        finalists=[by_point[f] for f in finalists if f in by_point],
        closest=[],
        caveats=_caveats(
            best, common["provenance"], spec, sim_profile, counts=_api_counts(records)
        ),
        **common,
    )


def artifacts(point: Point, spec: BenchmarkSpec) -> Artifacts:
    """The `vllm serve` command line, the power-limit and clock-lock commands and a Kubernetes
    container."""
    args = serve_args(point, spec)
    cap, lock = point.power_limit_w, point.sm_clock_mhz
    gpus = ",".join(str(i) for i in range(point.tensor_parallel_size))
    count = {_GPU_RESOURCE: str(point.tensor_parallel_size)}
    return Artifacts(
        vllm_serve_args=args.flags(),
        vllm_serve_command=args.shell(),
        power_limit_w=cap,
        power_limit_command=None if cap is None else f"sudo nvidia-smi -i {gpus} -pl {cap:g}",
        sm_clock_mhz=lock,
        sm_clock_lock_command=(
            None if lock is None else f"sudo nvidia-smi -i {gpus} -lgc {lock},{lock}"
        ),
        kubernetes_container=ContainerPatch(
            name="vllm",
            image=spec.engine.image,
            args=args.argv(),
            resources={"limits": count, "requests": dict(count)},
        ),
    )


def _summarize(point: Point, group: Sequence[TrialRecord], spec: BenchmarkSpec) -> PointSummary:
    figures = [r.figures for r in group if r.figures is not None]
    mean = TrialFigures.mean(figures)
    energies = [f.energy_per_output_token_j for f in figures]
    excess = {s.metric.value: mean.latency_ms[s.metric.value] - s.max_ms for s in spec.slos}
    return PointSummary(
        point=point,
        label=point.label(),
        runs=len(group),
        trials=[r.number for r in group],
        figures=mean,
        energy_per_output_token_j_min=min(energies),
        energy_per_output_token_j_max=max(energies),
        energy_spread_pct=100.0 * (max(energies) - min(energies)) / mean.energy_per_output_token_j,
        slo_excess_ms=excess,
        feasible=all(v <= 0 for v in excess.values()),
        is_baseline=any(r.role is Role.BASELINE for r in group),
        provenance=common_provenance(r.provenance for r in group),
    )


def _api_counts(records: Sequence[TrialRecord]) -> int:
    """How many API-server counts the study tried."""
    return len({r.point.api_server_count for r in records})


def _caveats(
    best: PointSummary,
    provenance: Provenance | None,
    spec: BenchmarkSpec,
    profile: SimProfile | None,
    *,
    counts: int,
) -> list[str]:
    """A power cap's or clock lock's saving from the simulator is a prediction: until a
    calibrated profile of the GPU under them exists, say so, with the published evidence;
    with one, say which. So is a TTFT the answer rests on (an SLO or the objective), the
    simulator's weakest figure, an ITL where request lengths vary, and the choice between the
    API-server counts it tried (`counts`)."""
    if provenance is None or not provenance.predicted:
        return []
    caveats = []
    if best.point.power_limit_w is not None:
        caveats.append(setting_caveat(profile, setting="cap"))
    if best.point.sm_clock_mhz is not None:
        caveats.append(setting_caveat(profile, setting="lock"))
    metrics = [metric.value for metric in spec.latency_metrics()]
    if any(m.startswith("ttft") for m in metrics):
        caveats.append(PREDICTED_TTFT_CAVEAT)
    lengths_vary = spec.workload.dataset != "random" or spec.workload.range_ratio > 0
    if lengths_vary and any(m.startswith("itl") for m in metrics):
        caveats.append(PREDICTED_ITL_CAVEAT)
    if counts > 1:
        caveats.append(PREDICTED_API_SERVER_CAVEAT)
    return caveats


def _against_baseline(
    best: PointSummary, baseline: PointSummary | None, spec: BenchmarkSpec
) -> tuple[float | None, float | None, float | None]:
    if baseline is None:
        return None, None, None
    metric = spec.objective.value
    saving = 100.0 * (1.0 - best.energy_per_output_token_j / baseline.energy_per_output_token_j)
    cost_ms = best.figures.latency_ms[metric] - baseline.figures.latency_ms[metric]
    cost_pct = 100.0 * cost_ms / baseline.figures.latency_ms[metric]
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
    latency = point.figures.latency_ms
    return max((v / (latency[k] - v) for k, v in point.slo_excess_ms.items()), default=0.0)
