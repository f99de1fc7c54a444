"""Energy sources: dcgm-exporter's and Kepler's series read in jouletune's units, the GPUs of
one trial picked out of a node's, and stale values (an exporter's collect interval) handled."""

from __future__ import annotations

from pathlib import Path

import pytest

from jouletune.loadgen import Window
from jouletune.loadgen._sources import GpuFilter, GpuReading, dialect_of, parse_text
from jouletune.loadgen._telemetry import ExporterScrape, measure_energy, refreshed_after

DATA = Path(__file__).parent / "data"
DCGM = dialect_of("dcgm")
KEPLER = dialect_of("kepler")


def test_a_real_dcgm_exporter_scrape_reads_as_joules_and_watts() -> None:
    gpus, driver = parse_text((DATA / "dcgm-exporter-l40s.txt").read_text(), DCGM, GpuFilter())
    assert driver == "595.58.03"
    (gpu,) = gpus
    assert (gpu.gpu, gpu.uuid, gpu.model_name, gpu.power_w) == (
        "0",
        "GPU-5b4e07f6-3a86-4340-039d-25f2a83cdc43",
        "NVIDIA L40S",
        35.686,
    )
    assert gpu.energy_j == pytest.approx(5_551_899.580)  # mJ -> J


def test_mig_instances_repeating_the_gpus_energy_count_it_once() -> None:
    gpus, _ = parse_text((DATA / "dcgm-exporter-mig.txt").read_text(), DCGM, GpuFilter())
    assert [(g.uuid, g.energy_j) for g in gpus] == [("GPU-265c9814-...", 126_272_101.025)]


_TWO_DCGM_GPUS = "".join(
    f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="{i}",UUID="GPU-{i}",modelName="NVIDIA H100 80GB'
    f' HBM3",hostname="node-a"{pod}}} {1000 * (i + 1)}\n'
    f'DCGM_FI_DEV_SM_CLOCK{{gpu="{i}",UUID="GPU-{i}"}} 1980\n'
    f'DCGM_FI_DEV_GPU_UTIL{{gpu="{i}",UUID="GPU-{i}"}} 87\n'
    f'DCGM_FI_DEV_GPU_TEMP{{gpu="{i}",UUID="GPU-{i}"}} 61\n'
    for i, pod in [(0, ',namespace="ml",pod="trial-0"'), (1, "")]
)


def test_dcgm_units_become_jouletunes() -> None:
    gpus, _ = parse_text(_TWO_DCGM_GPUS, DCGM, GpuFilter())
    first = gpus[0]
    assert (first.energy_j, first.sm_clock_hz, first.temperature_c) == (1.0, 1.98e9, 61.0)
    assert first.utilization == pytest.approx(0.87)
    assert first.power_limit_w is None  # not among dcgm-exporter's default counters


@pytest.mark.parametrize(
    ("chosen", "uuids"),
    [
        (GpuFilter(), ["GPU-0", "GPU-1"]),
        (GpuFilter(uuids=frozenset({"GPU-1"})), ["GPU-1"]),
        (GpuFilter(labels={"pod": "trial-0", "namespace": "ml"}), ["GPU-0"]),
        (GpuFilter(labels={"hostname": "node-b"}), []),
    ],
    ids=["all", "by-uuid", "by-pod", "other-node"],
)
def test_a_filter_picks_one_trials_gpus(chosen: GpuFilter, uuids: list[str]) -> None:
    assert [g.uuid for g in parse_text(_TWO_DCGM_GPUS, DCGM, chosen)[0]] == uuids


def test_the_same_choice_as_promql() -> None:
    chosen = GpuFilter(uuids=frozenset({"GPU-b", "GPU-a"}), labels={"pod": 'we"ird'})
    assert chosen.promql(DCGM) == '{UUID=~"GPU-a|GPU-b",pod="we\\"ird"}'
    assert GpuFilter().promql(KEPLER) == "{}"


def test_keplers_node_gpu_series() -> None:
    # Kepler's names and labels (internal/exporter/prometheus/collector/power_collector.go).
    text = (
        "# HELP kepler_node_gpu_joules_total Energy consumption of gpu at node level in joules\n"
        "# TYPE kepler_node_gpu_joules_total counter\n"
        'kepler_node_gpu_joules_total{gpu="0",gpu_uuid="GPU-k",gpu_name="NVIDIA H100 80GB HBM3",'
        'vendor="nvidia",node_name="n1"} 1234.5\n'
        "# TYPE kepler_node_gpu_watts gauge\n"
        'kepler_node_gpu_watts{gpu="0",gpu_uuid="GPU-k",gpu_name="NVIDIA H100 80GB HBM3",'
        'vendor="nvidia",node_name="n1"} 412.0\n'
    )
    gpus, driver = parse_text(text, KEPLER, GpuFilter(labels={"node_name": "n1"}))
    assert driver == ""
    assert [(g.uuid, g.model_name, g.energy_j, g.power_w) for g in gpus] == [
        ("GPU-k", "NVIDIA H100 80GB HBM3", 1234.5, 412.0)
    ]


def _scrapes(points: list[tuple[float, float]]) -> list[ExporterScrape]:
    return [
        ExporterScrape(
            url="http://x", t_s=t, gpus=(GpuReading(gpu="0", uuid="u", model_name="m", energy_j=e),)
        )
        for t, e in points
    ]


def test_stale_repeats_are_dropped_before_interpolating() -> None:
    # 500 W, but the exporter refreshes its value once a second while scraped every 0.1 s: a
    # value is what the GPU read when it first appears. Interpolating between the repeats
    # would put the window's start at the 1 s value; between fresh values it is exact.
    points = [(i / 10, 500.0 * (i // 10)) for i in range(41)]
    m = measure_energy(
        _scrapes(points), Window(start_s=1.5, end_s=3.5, plateau_in_flight=1), cap_ratio=0.98
    )
    assert m.energy_j == pytest.approx(1000.0)
    assert m.gpus[0].scrapes_in_window == 21
    assert m.gpus[0].energy_updates_in_window == 2  # 2.0 and 3.0


def test_a_fresh_value_after_the_run_is_awaited() -> None:
    stale = _scrapes([(0.0, 10.0), (1.0, 20.0), (1.5, 20.0)])
    assert not refreshed_after(stale, 1.2)
    assert refreshed_after([*stale, *_scrapes([(2.0, 30.0)])], 1.2)
