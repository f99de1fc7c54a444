"""GpuCollector in a fresh registry: names, labels, units, and a fresh read per scrape."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from jouletune.exporter import GpuCollector
from jouletune.gpu import GpuError, GpuSample

H100 = "NVIDIA H100 80GB HBM3"


def _sample(index: int, **changes: object) -> GpuSample:
    base = GpuSample(
        index=index, uuid=f"GPU-{index}", name=H100, energy_j=1000.0 + index, power_w=350.5,
        power_limit_w=700.0, sm_clock_hz=1.98e9, utilization_ratio=0.87,
        memory_used_bytes=3 << 30, memory_total_bytes=80 << 30, temperature_c=45.0,
        timestamp_s=1.7e9,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _labels(index: int, **extra: str) -> dict[str, str]:
    return {"gpu": str(index), "uuid": f"GPU-{index}", "model_name": H100, **extra}


class Reader:
    """Returns `samples` and counts how often the collector read the GPUs."""

    def __init__(self, samples: list[GpuSample]) -> None:
        self.samples = samples
        self.reads = 0

    def __call__(self) -> list[GpuSample]:
        self.reads += 1
        return self.samples


def test_every_metric_per_gpu_in_base_units() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([_sample(0), _sample(1)])))
    value = registry.get_sample_value
    assert value("jouletune_gpu_energy_joules_total", _labels(1)) == 1001.0
    assert value("jouletune_gpu_power_watts", _labels(0)) == 350.5
    assert value("jouletune_gpu_power_limit_watts", _labels(0)) == 700.0
    assert value("jouletune_gpu_sm_clock_hertz", _labels(0)) == 1.98e9
    assert value("jouletune_gpu_utilization_ratio", _labels(0)) == 0.87
    assert value("jouletune_gpu_memory_used_bytes", _labels(0)) == float(3 << 30)
    assert value("jouletune_gpu_temperature_celsius", _labels(1)) == 45.0
    assert value("jouletune_gpu_energy_estimated", _labels(1)) == 0.0


def test_energy_is_a_counter_and_the_rest_gauges() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([_sample(0)])))
    types = {m.name: m.type for m in registry.collect()}
    assert types.pop("jouletune_gpu_energy_joules") == "counter"
    assert set(types.values()) == {"gauge"}
    assert "# TYPE jouletune_gpu_energy_joules_total counter" in generate_latest(registry).decode()


def test_pod_and_namespace_labels_when_known() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([_sample(0)]), pod="trial-3", namespace="ml"))
    labels = _labels(0, pod="trial-3", namespace="ml")
    assert registry.get_sample_value("jouletune_gpu_power_watts", labels) == 350.5
    assert registry.get_sample_value("jouletune_gpu_power_watts", _labels(0)) is None


def test_unsupported_readings_are_absent_not_zero() -> None:
    sample = _sample(0, sm_clock_hz=None, utilization_ratio=None, temperature_c=None)
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([sample])))
    assert registry.get_sample_value("jouletune_gpu_sm_clock_hertz", _labels(0)) is None
    assert registry.get_sample_value("jouletune_gpu_utilization_ratio", _labels(0)) is None
    assert registry.get_sample_value("jouletune_gpu_temperature_celsius", _labels(0)) is None
    assert registry.get_sample_value("jouletune_gpu_power_watts", _labels(0)) == 350.5


def test_estimated_energy_is_flagged() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([_sample(0, energy_estimated=True)])))
    assert registry.get_sample_value("jouletune_gpu_energy_estimated", _labels(0)) == 1.0


def test_gpus_are_read_at_scrape_time_not_at_registration() -> None:
    reader = Reader([_sample(0)])
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=reader))
    assert reader.reads == 0
    first = registry.get_sample_value("jouletune_gpu_energy_joules_total", _labels(0))
    reader.samples = [_sample(0, energy_j=2500.0)]
    second = registry.get_sample_value("jouletune_gpu_energy_joules_total", _labels(0))
    assert (first, second, reader.reads) == (1000.0, 2500.0, 2)


def test_registering_twice_in_one_registry_collides() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(read=Reader([])))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(GpuCollector(read=Reader([])))


def test_a_read_failure_fails_the_scrape() -> None:
    def broken() -> list[GpuSample]:
        raise GpuError("NVML failed while reading GPU 0: GPU is lost")

    registry = CollectorRegistry()
    registry.register(GpuCollector(read=broken))
    with pytest.raises(GpuError, match="GPU is lost"):
        generate_latest(registry)
