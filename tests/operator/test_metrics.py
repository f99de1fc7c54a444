"""Operator metrics in a fresh registry, read back with get_sample_value."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from jouletune.operator import BenchmarkStatus, CompactResult, OperatorMetrics, Phase, TrialState
from jouletune.operator._wire import LatencyStats

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
    result = CompactResult(
        ok=True,
        energy_per_output_token_j=0.25,
        tpot_ms=LatencyStats(mean=10, p50=9, p90=12, p99=20),
    )
    metrics.observe_result("ml", "b", trial=4, result=result)

    value = registry.get_sample_value
    assert value("jouletune_operator_trials", {**LABELS, "state": "Running"}) == 2
    assert value("jouletune_operator_trials", {**LABELS, "state": "Failed"}) == 1
    assert value("jouletune_operator_benchmark_phase", {**LABELS, "phase": "Running"}) == 1
    assert value("jouletune_operator_benchmark_phase", {**LABELS, "phase": "Failed"}) == 0
    assert value("jouletune_operator_best_energy_per_output_token_joules", LABELS) == 0.2
    assert (
        value("jouletune_operator_trial_duration_seconds_sum", {**LABELS, "state": "Complete"})
        == 42.0
    )
    assert value("jouletune_operator_trial_failures_total", {**LABELS, "reason": "OOMKilled"}) == 1
    trial = {**LABELS, "trial": "4"}
    assert value("jouletune_operator_trial_energy_per_output_token_joules", trial) == 0.25
    assert (
        value(
            "jouletune_operator_trial_latency_seconds",
            {**trial, "metric": "tpot", "statistic": "p90"},
        )
        == 0.012
    )
    assert (
        value(
            "jouletune_operator_trial_latency_seconds",
            {**trial, "metric": "ttft", "statistic": "p90"},
        )
        is None
    ), "no sample, no series"

    metrics.forget("ml", "b")
    assert 'benchmark="b"' not in generate_latest(registry).decode()


def test_nothing_registers_globally() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    OperatorMetrics(registry=first)
    OperatorMetrics(registry=second)  # would raise DuplicateTimeseries in a shared registry
