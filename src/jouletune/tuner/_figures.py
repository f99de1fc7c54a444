"""`TrialFigures`: what one measurement found, as one typed model.

Every view of a trial's figures derives from this model's fields: Optuna's user attributes,
trials.csv, report.html, the EnergyBenchmark status, the trial pod's result message and the
operator's per-trial Prometheus series. A field annotated with `Show(title, fmt)` appears in
every table by itself, so adding a figure is one field here plus its `Show`
(docs/architecture.md walks through an example).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from jouletune.tuner.spec import LatencyMetric

if TYPE_CHECKING:
    from jouletune.loadgen import BenchResult

__all__ = ["Column", "InvalidMeasurementError", "Show", "TrialFigures"]


class InvalidMeasurementError(ValueError):
    """A bench result with nothing to keep: no energy per output token."""


@dataclass(frozen=True)
class Show:
    """How tables show a figure: a column title and a format spec (`format(value, fmt)`)."""

    title: str
    fmt: str


@dataclass(frozen=True)
class Column:
    """One column of a figures table.

    Attributes:
        name: the key in `TrialFigures.flat()` (a field name, or `<latency metric>_ms`).
        title: the column header.
        fmt: the value's format spec.
    """

    name: str
    title: str
    fmt: str

    def format(self, value: float | int | None) -> str:
        """The cell text; empty for a figure that was not measured."""
        return "" if value is None else format(value, self.fmt)


class TrialFigures(BaseModel):
    """The figures of one measurement; units in field names, None where not measured.

    Attributes:
        energy_per_output_token_j: joules per output token over the steady-state window.
        latency_ms: every latency statistic the bench reported (`ttft_p50`, `tpot_p90`, ...;
            the keys are `LatencyMetric` values), milliseconds.
        output_token_throughput: output tokens per second in the window.
        avg_power_w: mean power of all the trial's GPUs together over the window, watts.
        avg_power_per_gpu_w: the busiest GPU's mean power over the window, watts (a cap
            binds per GPU, so this is what to compare with it).
        power_cap_bound_fraction: fraction of the window the GPUs sat at their power limit.
        avg_batch_size: mean requests running in the engine over the window.
        batch_fill: avg_batch_size / the server's max_num_seqs.
        gpu_utilization: mean fraction of the window a kernel ran.
        sm_clock_ratio: mean SM clock / the GPU's maximum.
        avg_sm_clock_mhz: the highest of the GPUs' mean SM clocks over the window, MHz (a
            lock binds per GPU, so this is what to compare with it).
        idle_energy_share: the window's energy spent with no request in flight.
        floor_distance: J/output-token over the physical floor (jouletune.loadgen's diagnosis).
        completed: requests that finished.
        failed_requests: requests that failed.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    energy_per_output_token_j: Annotated[float, Show("J/token", ".4g")]
    latency_ms: dict[str, float] = {}
    output_token_throughput: Annotated[float | None, Show("tok/s", ",.0f")] = None
    avg_power_w: Annotated[float | None, Show("W", ".0f")] = None
    avg_power_per_gpu_w: Annotated[float | None, Show("W/GPU", ".0f")] = None
    power_cap_bound_fraction: Annotated[float | None, Show("at cap", ".0%")] = None
    avg_batch_size: Annotated[float | None, Show("batch", ".1f")] = None
    batch_fill: Annotated[float | None, Show("fill", ".0%")] = None
    gpu_utilization: Annotated[float | None, Show("util", ".0%")] = None
    sm_clock_ratio: Annotated[float | None, Show("clock", ".0%")] = None
    avg_sm_clock_mhz: Annotated[float | None, Show("MHz", ".0f")] = None
    idle_energy_share: Annotated[float | None, Show("idle E", ".0%")] = None
    floor_distance: Annotated[float | None, Show("x floor", ".2f")] = None
    completed: Annotated[int, Show("requests", "d")] = 0
    failed_requests: Annotated[int, Show("failed", "d")] = 0

    @staticmethod
    def problem(result: BenchResult) -> str | None:
        """Why a `jouletune bench` result must not rank (one line), or None when it may."""
        if result.partial:
            return "the server was lost during the measurement"
        if not result.valid:
            return f"invalid measurement: {result.invalid_reason or 'no reason given'}"
        return None

    @classmethod
    def from_result(cls, result: BenchResult, *, num_gpus: int) -> TrialFigures:
        """The figures of a `jouletune bench` result, valid or not (`problem` says whether it
        may rank): an invalid measurement is kept and shown with its reasons.

        Raises:
            InvalidMeasurementError: the result holds no energy per output token.
        """
        energy = _finite(result.energy_per_output_token_j)
        if energy is None or energy <= 0:
            raise InvalidMeasurementError("the bench measured no energy per output token")
        latency = {
            metric.value: value
            for metric in LatencyMetric
            if (value := _finite(_statistic(result, metric))) is not None
        }
        per_gpu = [g.avg_power_w for g in result.gpus]
        clocks_hz = [g.sm_clock.mean for g in result.gpus if g.sm_clock is not None]
        total_w = _finite(result.avg_power_w)
        d = result.diagnosis
        return cls(
            energy_per_output_token_j=energy,
            latency_ms=latency,
            output_token_throughput=_finite(result.output_token_throughput),
            avg_power_w=total_w,
            avg_power_per_gpu_w=max(per_gpu) if per_gpu else _divide(total_w, num_gpus),
            power_cap_bound_fraction=_finite(result.power_cap_bound_fraction),
            avg_batch_size=_finite(result.avg_batch_size),
            batch_fill=_finite(d.batch_fill) if d else None,
            gpu_utilization=_finite(d.gpu_utilization) if d else None,
            sm_clock_ratio=_finite(d.sm_clock_ratio) if d else None,
            avg_sm_clock_mhz=_finite(max(clocks_hz) / 1e6) if clocks_hz else None,
            idle_energy_share=_finite(d.idle_energy_share) if d else None,
            floor_distance=_finite(d.floor_distance) if d else None,
            completed=result.completed,
            failed_requests=result.failed,
        )

    def latency(self, metric: LatencyMetric) -> float | None:
        """One latency statistic, milliseconds; None when the bench did not report it."""
        return self.latency_ms.get(metric.value)

    def flat(self) -> dict[str, float | int | None]:
        """Every figure under its column name: the fields, then `<metric>_ms` per latency."""
        values: dict[str, float | int | None] = {
            name: getattr(self, name) for name, _ in _shown_fields()
        }
        values.update({f"{m}_ms": self.latency_ms.get(m) for m in _METRICS})
        return values

    @classmethod
    def columns(cls, latency: Sequence[LatencyMetric] | None = None) -> list[Column]:
        """The table columns: every shown field, then the given latency statistics (all of
        them by default)."""
        shown = [Column(name, show.title, show.fmt) for name, show in _shown_fields()]
        metrics = [m.value for m in latency] if latency is not None else list(_METRICS)
        return shown + [Column(f"{m}_ms", f"{m} ms", ".2f") for m in metrics]

    @classmethod
    def mean(cls, group: Sequence[TrialFigures]) -> TrialFigures:
        """Each figure's mean over several measurements of one point (None where none had it)."""
        assert group, "a mean needs at least one measurement"
        values: dict[str, Any] = {}
        for name, _ in _shown_fields():
            known = [v for f in group if (v := getattr(f, name)) is not None]
            mean = statistics.fmean(known) if known else None
            field_type = cls.model_fields[name].annotation
            values[name] = round(mean) if field_type is int and mean is not None else mean
        keys = dict.fromkeys(k for f in group for k in f.latency_ms)
        values["latency_ms"] = {
            k: statistics.fmean(f.latency_ms[k] for f in group if k in f.latency_ms) for k in keys
        }
        return cls.model_validate(values)


# Every latency statistic, in a fixed order (`ttft_mean`, `ttft_p50`, ...).
_METRICS = tuple(m.value for m in LatencyMetric)


def _shown_fields() -> Iterator[tuple[str, Show]]:
    for name, info in TrialFigures.model_fields.items():
        show = next((m for m in info.metadata if isinstance(m, Show)), None)
        if show is not None:
            yield name, show


def _statistic(result: BenchResult, metric: LatencyMetric) -> float | None:
    family, stat = metric.result_key
    value: float | None = getattr(getattr(result, family), stat)
    return value


def _finite(value: float | int | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _divide(total: float | None, count: int) -> float | None:
    return None if total is None else total / max(count, 1)
