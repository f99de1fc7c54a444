"""Readings of the exporters' and the server's `/metrics`, and what they say about a window.

Pure functions: parsing Prometheus text (prometheus_client's parser) and summarising scrapes
over the steady-state window. A scrape is stamped with the midpoint of its HTTP request on
the perf_counter clock; on loopback or in one pod that is within a millisecond of the read.

Energy follows the measurement rules (docs/contract.md): the cumulative energy counter (of
whichever source, `_sources`) is linearly interpolated at the window's edges between the
scrapes that bracket each edge, per GPU; a counter that goes backwards anywhere between those
scrapes invalidates the measurement. A reading that repeats the previous counter value is a
stale copy (dcgm-exporter and Prometheus serve the last value they collected until the next
collection) and is dropped, so an edge is interpolated between fresh values only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import VLLM_RUNNING, VLLM_WAITING
from jouletune.loadgen._records import Window
from jouletune.loadgen._result import GpuResult, Spread
from jouletune.loadgen._sources import GpuReading

__all__ = [
    "EnergyMeasurement",
    "ExporterScrape",
    "ServerScrape",
    "avg_running",
    "avg_waiting",
    "energy_during",
    "measure_energy",
    "parse_server_text",
    "refreshed_after",
]

# The two gauges' sample lines, with or without labels.
_GAUGE_PREFIXES = tuple(f"{name}{sep}" for name in (VLLM_RUNNING, VLLM_WAITING) for sep in "{ ")


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
    counter_decreases: int = 0


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
    inside = [s.running for s in scrapes if window.start_s <= s.t_s <= window.end_s]
    return _mean(inside)


def avg_waiting(scrapes: Sequence[ServerScrape], window: Window) -> float | None:
    """Mean of `vllm:num_requests_waiting` over the scrapes inside the window, or None."""
    inside = [s.waiting for s in scrapes if window.start_s <= s.t_s <= window.end_s]
    return _mean(inside)


def refreshed_after(scrapes: Sequence[ExporterScrape], t_s: float) -> bool:
    """True when every GPU read by `t_s` has since shown a counter value unlike its last one
    before: the window's end then has a fresh reading after it (see the module docstring)."""
    last: dict[tuple[str, str], float] = {}
    fresh: set[tuple[str, str]] = set()
    for scrape in sorted(scrapes, key=lambda s: s.t_s):
        for gpu in scrape.gpus:
            key = (scrape.url, gpu.uuid)
            if scrape.t_s <= t_s:
                last[key] = gpu.energy_j
            elif key in last and gpu.energy_j != last[key]:
                fresh.add(key)
    return fresh >= set(last)


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
    decreases = 0
    for (url, _, _), points in series.items():
        points.sort(key=lambda p: p[0])
        decreases += _decreases(_fresh(points), window)
        result = _gpu_energy(url, points, window, cap_ratio)
        if isinstance(result, str):
            problems.append(result)
        else:
            gpus.append(result)
    if not series:
        problems.append("no exporter scrape saw a GPU energy counter")
    return _combine(gpus, problems, window, decreases)


def energy_during(
    scrapes: Sequence[ExporterScrape], spans: Sequence[tuple[float, float]]
) -> float | None:
    """Joules all GPUs drew during `spans` ((start, end) pairs), from each GPU's counter
    interpolated between fresh readings; None without readings."""
    series: dict[tuple[str, str], list[tuple[float, GpuReading]]] = {}
    for scrape in scrapes:
        for reading in scrape.gpus:
            series.setdefault((scrape.url, reading.uuid), []).append((scrape.t_s, reading))
    if not series:
        return None
    starts = np.array([a for a, _ in spans], dtype=np.float64)
    ends = np.array([b for _, b in spans], dtype=np.float64)
    total = 0.0
    for points in series.values():
        fresh = _fresh(sorted(points, key=lambda p: p[0]))
        t = np.array([p[0] for p in fresh], dtype=np.float64)
        e = np.array([p[1].energy_j for p in fresh], dtype=np.float64)
        total += float(np.sum(np.interp(ends, t, e) - np.interp(starts, t, e)))
    return total


def _decreases(fresh: list[tuple[float, GpuReading]], window: Window) -> int:
    """Times the counter went backwards between the readings that bracket the window."""
    lo = max((i for i, (t, _) in enumerate(fresh) if t <= window.start_s), default=0)
    hi = min((i for i, (t, _) in enumerate(fresh) if t >= window.end_s), default=len(fresh) - 1)
    span = [r.energy_j for _, r in fresh[lo : hi + 1]]
    return sum(1 for a, b in itertools.pairwise(span) if b < a)


def _combine(
    gpus: list[GpuResult], problems: list[str], window: Window, decreases: int
) -> EnergyMeasurement:
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
        counter_decreases=decreases,
    )


def _gpu_energy(
    url: str, points: list[tuple[float, GpuReading]], window: Window, cap_ratio: float
) -> GpuResult | str:
    """This GPU's energy over the window, or the reason (one line) it cannot be measured."""
    name = f"exporter {url} GPU {points[0][1].gpu or points[0][1].uuid}"
    fresh = _fresh(points)
    lo = max((i for i, (t, _) in enumerate(fresh) if t <= window.start_s), default=None)
    hi = min((i for i, (t, _) in enumerate(fresh) if t >= window.end_s), default=None)
    if lo is None or hi is None:
        edge = "before the window start" if lo is None else "after the window end"
        return f"{name}: no energy reading {edge}; cannot interpolate"
    for (_, prev), (_, nxt) in zip(fresh[lo:hi], fresh[lo + 1 : hi + 1], strict=True):
        if nxt.energy_j < prev.energy_j:
            return (
                f"{name}: energy counter went backwards ({prev.energy_j:.3f} J -> "
                f"{nxt.energy_j:.3f} J) inside the window; a reset or a different GPU"
            )
    energy_j = _interpolate(fresh, hi, window.end_s) - _interpolate(fresh, lo + 1, window.start_s)
    inside = [r for t, r in points if window.start_s <= t <= window.end_s]
    end_t = fresh[hi][0]
    limits = [r.power_limit_w for t, r in points if t <= end_t and r.power_limit_w is not None]
    first = points[0][1]
    return GpuResult(
        exporter_url=url,
        gpu=first.gpu,
        uuid=first.uuid,
        model_name=first.model_name,
        energy_j=energy_j,
        avg_power_w=energy_j / window.duration_s,
        sampled_power_w=_mean(r.power_w for r in inside),
        power_limit_w=limits[-1] if limits else None,
        power_cap_bound_fraction=_cap_bound(inside, cap_ratio),
        scrapes_in_window=len(inside),
        energy_updates_in_window=sum(1 for t, _ in fresh if window.start_s <= t <= window.end_s),
        sm_clock=Spread.of(r.sm_clock_hz for r in inside),
        temperature_c=Spread.of(r.temperature_c for r in inside),
        utilization=_mean(r.utilization for r in inside),
    )


def _fresh(points: list[tuple[float, GpuReading]]) -> list[tuple[float, GpuReading]]:
    """The readings whose counter value differs from the one before (the first of each)."""
    kept = points[:1]
    for t_s, reading in points[1:]:
        if reading.energy_j != kept[-1][1].energy_j:
            kept.append((t_s, reading))
    return kept


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _cap_bound(inside: list[GpuReading], cap_ratio: float) -> float | None:
    paired = [
        (r.power_w, r.power_limit_w) for r in inside if r.power_w is not None and r.power_limit_w
    ]
    if not paired:
        return None
    return sum(1 for p, lim in paired if p >= cap_ratio * lim) / len(paired)


def _interpolate(points: list[tuple[float, GpuReading]], upper: int, t_s: float) -> float:
    """The counter at `t_s`, linear between points[upper - 1] and points[upper]."""
    if upper == 0:
        return points[0][1].energy_j
    (t0, r0), (t1, r1) = points[upper - 1], points[upper]
    if t1 <= t0 or t_s >= t1:
        return r1.energy_j
    frac = max(0.0, (t_s - t0) / (t1 - t0))
    return r0.energy_j + frac * (r1.energy_j - r0.energy_j)
