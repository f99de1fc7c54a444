"""GpuSample / PowerLimitRange JSON form: the sim-server's `/sim/gpus` wire format."""

from __future__ import annotations

import json

import pytest

from jouletune.gpu import GpuSample, PowerLimitRange

SAMPLE = GpuSample(
    index=3, uuid="GPU-x", name="NVIDIA H100 80GB HBM3", energy_j=1234.5, power_w=456.7,
    power_limit_w=700.0, sm_clock_hz=1.98e9, utilization_ratio=None, memory_used_bytes=1 << 33,
    memory_total_bytes=80 << 30, temperature_c=51.0, timestamp_s=1.7e9,
)  # fmt: skip


def test_json_round_trip_through_text() -> None:
    text = json.dumps(SAMPLE.to_json())
    assert GpuSample.from_json(json.loads(text)) == SAMPLE


def test_from_json_ignores_unknown_keys_and_defaults_the_flag() -> None:
    data = SAMPLE.to_json()
    del data["energy_estimated"]
    data["power_limit_range"] = {"min_w": 200, "max_w": 700, "default_w": 700}
    assert GpuSample.from_json(data) == SAMPLE


def test_from_json_names_a_missing_field() -> None:
    data = SAMPLE.to_json()
    del data["energy_j"]
    with pytest.raises(ValueError, match="lacks field 'energy_j'"):
        GpuSample.from_json(data)


def test_from_json_rejects_a_malformed_value() -> None:
    with pytest.raises(ValueError, match="malformed"):
        GpuSample.from_json({**SAMPLE.to_json(), "power_w": "lots"})


def test_power_limit_range_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="inconsistent power-limit range"):
        PowerLimitRange(min_w=300, max_w=200, default_w=250)
    rng = PowerLimitRange(min_w=100, max_w=300, default_w=250)
    assert PowerLimitRange.from_json(rng.to_json()) == rng
