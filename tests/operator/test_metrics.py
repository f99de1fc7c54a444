"""Operator metrics in a fresh registry, read back with get_sample_value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from jouletune.operator import BenchmarkStatus, OperatorMetrics, Phase
from jouletune.tuner import TrialFigures, TrialState

LABELS = {"namespace": "ml", "benchmark": "b"}


def test_status_trials_results_and_forgetting() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=registry)
    status = BenchmarkStatus(
        phase=Phase.RUNNING,
        trials_running=2,
        trials_complete=3,
        trials_failed=1,
        best_j_per_token=0.2,
    )
    metrics.observe_status("ml", "b", status)
    metrics.observe_trial("ml", "b", state=TrialState.COMPLETE, duration_s=42.0, reason=None)
    metrics.observe_trial("ml", "b", state=TrialState.FAILED, duration_s=3.0, reason="OOMKilled")
    figures = TrialFigures(energy_per_output_token_j=0.25, latency_ms={"tpot_p90": 12.0})
    metrics.observe_figures("ml", "b", trial=4, figures=figures)

    value = registry.get_sample_value
    assert value("jouletune_operator_trials", {**LABELS, "state": "running"}) == 2
    assert value("jouletune_operator_trials", {**LABELS, "state": "failed"}) == 1
    assert value("jouletune_operator_benchmark_phase", {**LABELS, "phase": "Running"}) == 1
    assert value("jouletune_operator_benchmark_phase", {**LABELS, "phase": "Failed"}) == 0
    assert value("jouletune_operator_best_energy_per_output_token_joules", LABELS) == 0.2
    assert (
        value("jouletune_operator_trial_duration_seconds_sum", {**LABELS, "state": "complete"})
        == 42.0
    )
    assert value("jouletune_operator_trial_failures_total", {**LABELS, "reason": "OOMKilled"}) == 1

    def figure(name: str) -> float | None:
        return value("jouletune_operator_trial_figure", {**LABELS, "trial": "4", "figure": name})

    assert figure("energy_per_output_token_j") == 0.25
    assert figure("tpot_p90_ms") == 12.0
    assert figure("completed") == 0
    assert figure("ttft_p90_ms") is None, "not measured, no series"
    assert figure("avg_power_w") is None, "not measured, no series"

    metrics.forget("ml", "b")
    assert 'benchmark="b"' not in generate_latest(registry).decode()


def test_nothing_registers_globally() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    OperatorMetrics(registry=first)
    OperatorMetrics(registry=second)  # would raise DuplicateTimeseries in a shared registry
