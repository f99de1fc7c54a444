"""The operator's Prometheus metrics (`/metrics` on `--metrics-port`).

Nothing registers at import: `OperatorMetrics` takes the registry it fills, so tests use a
fresh `CollectorRegistry()` and read values with `get_sample_value`.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jouletune.operator._status import BenchmarkStatus, Phase
from jouletune.tuner import TrialFigures, TrialState

__all__ = ["OperatorMetrics"]

# Trials last from seconds (the simulator) to an hour (a 70B model on real GPUs).
_DURATION_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)


class OperatorMetrics:
    """Metric families of one operator process, per benchmark (`namespace`, `benchmark`)."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        labels = ["namespace", "benchmark"]
        self._trials = Gauge(
            "jouletune_operator_trials",
            "Trials of a benchmark by state (running, complete, failed).",
            [*labels, "state"],
            registry=registry,
        )
        self._phase = Gauge(
            "jouletune_operator_benchmark_phase",
            "1 for the benchmark's current phase, 0 for the others.",
            [*labels, "phase"],
            registry=registry,
        )
        self._best = Gauge(
            "jouletune_operator_best_energy_per_output_token_joules",
            "Lowest feasible energy per output token measured so far.",
            labels,
            registry=registry,
        )
        self._duration = Histogram(
            "jouletune_operator_trial_duration_seconds",
            "Wall time of a trial pod, from its creation to the result being read.",
            [*labels, "state"],
            buckets=_DURATION_BUCKETS_S,
            registry=registry,
        )
        self._failures = Counter(
            "jouletune_operator_trial_failures",
            "Trials that failed, by reason (Unschedulable, OOMKilled, Timeout, ...).",
            [*labels, "reason"],
            registry=registry,
        )
        self._trial_figure = Gauge(
            "jouletune_operator_trial_figure",
            "A measured trial's figures, one series each: `figure` names a TrialFigures figure "
            "(`energy_per_output_token_j`, `tpot_p90_ms`, ...), whose suffix is its unit.",
            [*labels, "trial", "figure"],
            registry=registry,
        )
        self._held_back = Gauge(
            "jouletune_operator_trial_held_back",
            "1 per measured trial, `cause` naming what its diagnosis says held it back (load, "
            "power cap, api server, scheduler, memory bandwidth, compute).",
            [*labels, "trial", "cause"],
            registry=registry,
        )
        # Label values seen per benchmark, to remove their series when it is deleted.
        self._reasons: dict[tuple[str, str], set[str]] = {}
        self._trial_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._causes: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def observe_status(self, namespace: str, name: str, status: BenchmarkStatus) -> None:
        """Set the per-benchmark gauges from the status just written."""
        counts = {
            TrialState.RUNNING: status.trials_running,
            TrialState.COMPLETE: status.trials_complete,
            TrialState.FAILED: status.trials_failed,
        }
        for state, count in counts.items():
            self._trials.labels(namespace, name, state.value).set(count)
        for phase in Phase:
            self._phase.labels(namespace, name, phase.value).set(int(phase is status.phase))
        if status.best_j_per_token is not None:
            self._best.labels(namespace, name).set(status.best_j_per_token)

    def observe_trial(
        self, namespace: str, name: str, *, state: TrialState, duration_s: float, reason: str | None
    ) -> None:
        """Record one finished trial."""
        self._duration.labels(namespace, name, state.value).observe(max(duration_s, 0.0))
        if state is TrialState.FAILED:
            reason = reason or "Unknown"
            self._failures.labels(namespace, name, reason).inc()
            self._reasons.setdefault((namespace, name), set()).add(reason)

    def observe_figures(
        self,
        namespace: str,
        name: str,
        *,
        trial: int,
        figures: TrialFigures,
        held_back_by: str | None = None,
    ) -> None:
        """Publish a measured trial's figures (every figure `TrialFigures.flat()` holds) and
        what held it back."""
        series = self._trial_series.setdefault((namespace, name), set())
        for figure, value in figures.flat().items():
            if value is not None:
                self._trial_figure.labels(namespace, name, str(trial), figure).set(value)
                series.add((str(trial), figure))
        if held_back_by is not None:
            self._held_back.labels(namespace, name, str(trial), held_back_by).set(1)
            self._causes.setdefault((namespace, name), set()).add((str(trial), held_back_by))

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted benchmark's series."""
        for state in TrialState:
            _remove(self._trials, namespace, name, state.value)
            _remove(self._duration, namespace, name, state.value)
        for phase in Phase:
            _remove(self._phase, namespace, name, phase.value)
        _remove(self._best, namespace, name)
        for reason in self._reasons.pop((namespace, name), set()):
            self._failures.remove(namespace, name, reason)
        for trial, figure in self._trial_series.pop((namespace, name), set()):
            _remove(self._trial_figure, namespace, name, trial, figure)
        for trial, cause in self._causes.pop((namespace, name), set()):
            _remove(self._held_back, namespace, name, trial, cause)


def _remove(metric: Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
