"""Readings of the exporters' and the server's `/metrics`, and what they say about a window.

Pure functions: parsing Prometheus text (prometheus_client's parser) and summarising scrapes
over the steady-state window. A scrape is stamped with the midpoint of its HTTP request on
the perf_counter clock; on loopback or in one pod that is within a millisecond of the read.

Energy follows the measurement rules (docs/contract.md): the cumulative counter
`jouletune_gpu_energy_joules_total` is linearly interpolated at the window's edges between the
scrapes that bracket each edge, per GPU; a counter that goes backwards anywhere between those
scrapes invalidates the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import GPU_ENERGY, GPU_POWER, GPU_POWER_LIMIT, VLLM_RUNNING, VLLM_WAITING
from jouletune.loadgen._records import Window
from jouletune.loadgen._result import GpuResult

__all__ = [
    "EnergyMeasurement",
    "ExporterScrape",
    "GpuReading",
    "ServerScrape",
    "avg_running",
    "measure_energy",
    "parse_driver_version",
    "parse_exporter_text",
    "parse_server_text",
]

# The two gauges' sample lines, with or without labels.
_GAUGE_PREFIXES = tuple(f"{name}{sep}" for name in (VLLM_RUNNING, VLLM_WAITING) for sep in "{ ")


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuReading:
    """One GPU's values in one exporter scrape (joules, watts)."""

    gpu: str
    uuid: str
    model_name: str
    energy_j: float
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ExporterScrape:
    """One scrape of one exporter; `t_s` is the request's midpoint (perf_counter seconds)."""

    url: str
    t_s: float
    gpus: tuple[GpuReading, ...]
    driver_version: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerScrape:
    """vLLM's scheduler gauges in one scrape of the server (summed over engines)."""

    t_s: float
    running: float | None
    waiting: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class EnergyMeasurement:
    """All GPUs over the window; `problem` (one line) is set when the energy is not valid."""

    gpus: tuple[GpuResult, ...]
    energy_j: float | None
    avg_power_w: float | None
    cap_bound_fraction: float | None
    problem: str | None


def parse_exporter_text(text: str) -> list[GpuReading]:
    """The GPUs in one exporter's `/metrics` text; GPUs without an energy counter are left out.

    Raises:
        ValueError: the text is not Prometheus exposition format.
    """
    by_gpu: dict[tuple[str, str], dict[str, float]] = {}
    labels_of: dict[tuple[str, str], dict[str, str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (GPU_ENERGY, GPU_POWER, GPU_POWER_LIMIT):
                key = (sample.labels.get("gpu", ""), sample.labels.get("uuid", ""))
                by_gpu.setdefault(key, {})[sample.name] = float(sample.value)
                labels_of.setdefault(key, sample.labels)
    return [
        GpuReading(
            gpu=key[0],
            uuid=key[1],
            model_name=labels_of[key].get("model_name", ""),
            energy_j=values[GPU_ENERGY],
            power_w=values.get(GPU_POWER),
            power_limit_w=values.get(GPU_POWER_LIMIT),
        )
        for key, values in sorted(by_gpu.items())
        if GPU_ENERGY in values
    ]


def parse_driver_version(text: str) -> str | None:
    """The `driver_version` label of any series in an exporter's text, if it exposes one."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if version := sample.labels.get("driver_version"):
                return version
    return None


def parse_server_text(text: str) -> tuple[float | None, float | None]:
    """(`vllm:num_requests_running`, `vllm:num_requests_waiting`) summed over engines.

    Only those two gauges' lines go to the parser: vLLM's full exposition is ~50 kB and is
    scraped several times a second during a run.

    Raises:
        ValueError: a kept line is not Prometheus exposition format.
    """
    kept = "\n".join(
        line
        for line in text.splitlines()
        if line.startswith(
            (VLLM_RUNNING + "{", VLLM_RUNNING + " ", VLLM_WAITING + "{", VLLM_WAITING + " ")
        )
    )
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(kept + "\n"):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + float(sample.value)
    return sums.get(VLLM_RUNNING), sums.get(VLLM_WAITING)


def avg_running(scrapes: Sequence[ServerScrape], window: Window) -> float | None:
    """Mean of `vllm:num_requests_running` over the scrapes inside the window, or None."""
    values = [
        s.running
        for s in scrapes
        if s.running is not None and window.start_s <= s.t_s <= window.end_s
    ]
    return sum(values) / len(values) if values else None


def measure_energy(
    scrapes: Sequence[ExporterScrape], window: Window, *, cap_ratio: float
) -> EnergyMeasurement:
    """Energy of every GPU the scrapes saw, over the window (see the module docstring)."""
    series: dict[tuple[str, str, str], list[tuple[float, GpuReading]]] = {}
    for scrape in scrapes:
        for reading in scrape.gpus:
            series.setdefault((scrape.url, reading.gpu, reading.uuid), []).append(
                (scrape.t_s, reading)
            )
    gpus: list[GpuResult] = []
    problems: list[str] = []
    for (url, _, _), points in series.items():
        points.sort(key=lambda p: p[0])
        result = _gpu_energy(url, points, window, cap_ratio)
        if isinstance(result, str):
            problems.append(result)
        else:
            gpus.append(result)
    if not series:
        problems.append("no exporter scrape saw a GPU energy counter")
    return _combine(gpus, problems, window)


def _combine(gpus: list[GpuResult], problems: list[str], window: Window) -> EnergyMeasurement:
    bound = [
        g.power_cap_bound_fraction * g.scrapes_in_window
        for g in gpus
        if g.power_cap_bound_fraction is not None
    ]
    counted = sum(g.scrapes_in_window for g in gpus if g.power_cap_bound_fraction is not None)
    energy_j = None if problems else sum(g.energy_j for g in gpus)
    return EnergyMeasurement(
        gpus=tuple(gpus),
        energy_j=energy_j,
        avg_power_w=None if energy_j is None else energy_j / window.duration_s,
        cap_bound_fraction=sum(bound) / counted if counted else None,
        problem="; ".join(problems) or None,
    )


def _gpu_energy(
    url: str, points: list[tuple[float, GpuReading]], window: Window, cap_ratio: float
) -> GpuResult | str:
    """This GPU's energy over the window, or the reason (one line) it cannot be measured."""
    name = f"exporter {url} GPU {points[0][1].gpu}"
    lo = max((i for i, (t, _) in enumerate(points) if t <= window.start_s), default=None)
    hi = min((i for i, (t, _) in enumerate(points) if t >= window.end_s), default=None)
    if lo is None or hi is None:
        edge = "start" if lo is None else "end"
        return f"{name}: no energy reading before the window {edge}; cannot interpolate"
    for (_, prev), (_, nxt) in zip(points[lo:hi], points[lo + 1 : hi + 1], strict=True):
        if nxt.energy_j < prev.energy_j:
            return (
                f"{name}: energy counter went backwards ({prev.energy_j:.3f} J -> "
                f"{nxt.energy_j:.3f} J) inside the window; a reset or a different GPU"
            )
    energy_j = _interpolate(points, hi, window.end_s) - _interpolate(points, lo + 1, window.start_s)
    inside = [r for t, r in points if window.start_s <= t <= window.end_s]
    powers = [r.power_w for r in inside if r.power_w is not None]
    paired = [
        (r.power_w, r.power_limit_w) for r in inside if r.power_w is not None and r.power_limit_w
    ]
    limits = [r.power_limit_w for _, r in points[lo : hi + 1] if r.power_limit_w is not None]
    return GpuResult(
        exporter_url=url,
        gpu=points[0][1].gpu,
        uuid=points[0][1].uuid,
        model_name=points[0][1].model_name,
        energy_j=energy_j,
        avg_power_w=energy_j / window.duration_s,
        sampled_power_w=sum(powers) / len(powers) if powers else None,
        power_limit_w=limits[-1] if limits else None,
        power_cap_bound_fraction=(
            sum(1 for p, lim in paired if p >= cap_ratio * lim) / len(paired) if paired else None
        ),
        scrapes_in_window=len(inside),
    )


def _interpolate(points: list[tuple[float, GpuReading]], upper: int, t_s: float) -> float:
    """The counter at `t_s`, linear between points[upper - 1] and points[upper]."""
    if upper == 0:
        return points[0][1].energy_j
    (t0, r0), (t1, r1) = points[upper - 1], points[upper]
    if t1 <= t0 or t_s >= t1:
        return r1.energy_j
    frac = max(0.0, (t_s - t0) / (t1 - t0))
    return r0.energy_j + frac * (r1.energy_j - r0.energy_j)
