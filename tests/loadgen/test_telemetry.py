"""Parsing exporter and server /metrics text, and energy over a window from counter scrapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jouletune.loadgen import Window
from jouletune.loadgen._sources import GpuFilter, GpuReading, dialect_of, parse_text
from jouletune.loadgen._telemetry import (
    ExporterScrape,
    ServerScrape,
    avg_running,
    measure_energy,
    parse_server_text,
)

JOULETUNE = dialect_of("jouletune")

CALIBRATION_METRICS = (
    Path(__file__).resolve().parents[2]
    / "benchmarks/results/h100-calibration/vllm0.24_metrics_exposition.txt"
)


class _TwoGpus(Collector):
    """Exposition as an exporter writes it, produced by prometheus_client itself."""

    def collect(self) -> Iterator[Metric]:
        labels = ["gpu", "uuid", "model_name"]
        energy = CounterMetricFamily(
            "jouletune_gpu_energy_joules", "e", labels=labels, unit="joules"
        )
        power = GaugeMetricFamily("jouletune_gpu_power_watts", "p", labels=labels)
        limit = GaugeMetricFamily("jouletune_gpu_power_limit_watts", "l", labels=labels)
        for i, (e, p) in enumerate([(1234.5, 400.0), (99.0, 650.0)]):
            lv = [str(i), f"GPU-{i}", "NVIDIA H100 80GB HBM3"]
            energy.add_metric(lv, e)
            power.add_metric(lv, p)
            limit.add_metric(lv, 700.0)
        yield from (energy, power, limit)


def test_parse_exporter_text_reads_every_gpu() -> None:
    registry = CollectorRegistry()
    registry.register(_TwoGpus())
    gpus, _ = parse_text(generate_latest(registry).decode(), JOULETUNE, GpuFilter())
    assert [(g.gpu, g.uuid, g.energy_j, g.power_w, g.power_limit_w) for g in gpus] == [
        ("0", "GPU-0", 1234.5, 400.0, 700.0),
        ("1", "GPU-1", 99.0, 650.0, 700.0),
    ]
    assert gpus[0].model_name == "NVIDIA H100 80GB HBM3"


def test_parse_exporter_text_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_text("<html>not metrics</html>\n", JOULETUNE, GpuFilter())


def test_parse_server_text_on_real_vllm_exposition() -> None:
    text = CALIBRATION_METRICS.read_text()
    assert parse_server_text(text) == (0.0, 0.0)  # `_by_reason` series are not summed in
    busy = text.replace(
        'vllm:num_requests_running{engine="0",model_name="/tmp/model"} 0.0',
        'vllm:num_requests_running{engine="0",model_name="/tmp/model"} 37.0',
    )
    assert parse_server_text(busy) == (37.0, 0.0)
    assert parse_server_text("# nothing here\n") == (None, None)


def _scrapes(
    energies: list[tuple[float, float]], *, power_w: float = 500.0
) -> list[ExporterScrape]:
    return [
        ExporterScrape(
            url="http://x",
            t_s=t,
            gpus=(
                GpuReading(
                    gpu="0",
                    uuid="u",
                    model_name="m",
                    energy_j=e,
                    power_w=power_w,
                    power_limit_w=700.0,
                ),
            ),
        )
        for t, e in energies
    ]


def test_energy_interpolates_the_counter_at_both_edges() -> None:
    # 100 J + 500 W * t, scraped every 0.1 s; window [0.25, 0.75] -> exactly 250 J.
    scrapes = _scrapes([(i / 10, 100 + 50.0 * i) for i in range(11)])
    m = measure_energy(
        scrapes, Window(start_s=0.25, end_s=0.75, plateau_in_flight=1), cap_ratio=0.98
    )
    assert m.problem is None
    assert m.energy_j == pytest.approx(250.0)
    assert m.avg_power_w == pytest.approx(500.0)
    assert m.gpus[0].scrapes_in_window == 5  # 0.3 .. 0.7
    assert m.cap_bound_fraction == 0.0


def test_energy_counter_going_backwards_invalidates() -> None:
    scrapes = _scrapes([(0.0, 100.0), (0.1, 150.0), (0.2, 10.0), (0.3, 60.0)])
    m = measure_energy(
        scrapes, Window(start_s=0.05, end_s=0.25, plateau_in_flight=1), cap_ratio=0.98
    )
    assert m.energy_j is None
    assert m.problem is not None and "went backwards" in m.problem


def test_energy_needs_a_scrape_beyond_each_edge() -> None:
    scrapes = _scrapes([(0.0, 0.0), (0.1, 50.0)])
    m = measure_energy(
        scrapes, Window(start_s=0.05, end_s=0.5, plateau_in_flight=1), cap_ratio=0.98
    )
    assert m.energy_j is None and m.problem is not None and "window end" in m.problem


def test_cap_bound_fraction_counts_scrapes_at_the_limit() -> None:
    at_cap = _scrapes([(i / 10, 70.0 * i) for i in range(11)], power_w=690.0)  # 690 >= 0.98*700
    m = measure_energy(
        at_cap, Window(start_s=0.05, end_s=0.95, plateau_in_flight=1), cap_ratio=0.98
    )
    assert m.cap_bound_fraction == 1.0


def test_avg_running_uses_scrapes_inside_the_window() -> None:
    scrapes = [
        ServerScrape(t_s=t, running=r, waiting=0.0)
        for t, r in [(0.0, 0), (1.0, 8), (2.0, 6), (3.0, 0)]
    ]
    assert avg_running(scrapes, Window(start_s=0.5, end_s=2.5, plateau_in_flight=8)) == 7.0
    assert avg_running(scrapes, Window(start_s=0.1, end_s=0.2, plateau_in_flight=8)) is None


def test_driver_version_label_is_found_when_exposed() -> None:
    text = (
        "# TYPE jouletune_gpu_energy_joules counter\n"
        'jouletune_gpu_energy_joules_total{gpu="0",uuid="u",model_name="m"} 5.0\n'
        "# TYPE jouletune_exporter_info gauge\n"
        'jouletune_exporter_info{driver_version="580.159.04",source="nvml"} 1.0\n'
    )
    assert parse_text(text, JOULETUNE, GpuFilter())[1] == "580.159.04"
    assert parse_text("# TYPE x gauge\nx 1\n", JOULETUNE, GpuFilter())[1] == ""
