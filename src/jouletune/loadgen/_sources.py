"""Where energy is read from: jouletune's exporter, NVIDIA's dcgm-exporter, or Kepler.

Each source is a dialect: the names of its energy counter and gauges, their units, and the
labels that identify a GPU. Readings leave this module in jouletune's units (J, W, Hz, ratio,
°C), so the window rule, the counter-reset handling and the result keys are one for all.

- `jouletune`: `jouletune exporter` (docs/contract.md).
- `dcgm`: dcgm-exporter 4.6.0-4.8.3 (`etc/default-counters.csv`, commit 7ad5832): energy in
  mJ since the driver loaded, power W, SM clock MHz, utilisation %, temperature °C; the power
  limit only where the user added `DCGM_FI_DEV_POWER_MGMT_LIMIT` to the counters. With MIG
  the energy series repeats per instance with the whole GPU's value: GPUs are keyed by UUID,
  so it counts once.
- `kepler`: Kepler's experimental node-level GPU series (joules and watts only).

A `GpuFilter` picks the GPUs of one trial out of a node's (or a cluster's) series: by UUID
(the GPUs the engine uses) and by exact label values (e.g. `pod`, `hostname`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client.parser import text_string_to_metric_families

from jouletune.contract import (
    DCGM_DRIVER_LABEL,
    DCGM_ENERGY,
    DCGM_GPU_TEMP,
    DCGM_GPU_UTIL,
    DCGM_POWER,
    DCGM_POWER_LIMIT,
    DCGM_SM_CLOCK,
    GPU_ENERGY,
    GPU_POWER,
    GPU_POWER_LIMIT,
    GPU_SM_CLOCK,
    GPU_TEMPERATURE,
    GPU_UTILIZATION,
    KEPLER_GPU_ENERGY,
    KEPLER_GPU_POWER,
)

__all__ = ["Dialect", "EnergySource", "GpuFilter", "GpuReading", "dialect_of", "parse_text"]


class EnergySource(StrEnum):
    """Which exporter's series the energy comes from."""

    JOULETUNE = "jouletune"
    DCGM = "dcgm"
    KEPLER = "kepler"


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuReading:
    """One GPU's values in one scrape, in jouletune's units (None: not exported)."""

    gpu: str
    uuid: str
    model_name: str
    energy_j: float
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_hz: float | None = None
    utilization: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True, kw_only=True)
class Dialect:
    """One exporter's series: sample name -> (GpuReading field, factor to jouletune's unit)."""

    source: EnergySource
    energy: str
    gauges: Mapping[str, tuple[str, float]]
    uuid_label: str
    model_label: str
    driver_label: str | None

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name this dialect reads, energy first."""
        return (self.energy, *self.gauges)


_DIALECTS = {
    EnergySource.JOULETUNE: Dialect(
        source=EnergySource.JOULETUNE,
        energy=GPU_ENERGY,
        gauges={
            GPU_POWER: ("power_w", 1.0),
            GPU_POWER_LIMIT: ("power_limit_w", 1.0),
            GPU_SM_CLOCK: ("sm_clock_hz", 1.0),
            GPU_UTILIZATION: ("utilization", 1.0),
            GPU_TEMPERATURE: ("temperature_c", 1.0),
        },
        uuid_label="uuid",
        model_label="model_name",
        driver_label="driver_version",  # on jouletune_exporter_info
    ),
    EnergySource.DCGM: Dialect(
        source=EnergySource.DCGM,
        energy=DCGM_ENERGY,
        gauges={
            DCGM_POWER: ("power_w", 1.0),
            DCGM_POWER_LIMIT: ("power_limit_w", 1.0),
            DCGM_SM_CLOCK: ("sm_clock_hz", 1e6),
            DCGM_GPU_UTIL: ("utilization", 0.01),
            DCGM_GPU_TEMP: ("temperature_c", 1.0),
        },
        uuid_label="UUID",
        model_label="modelName",
        driver_label=DCGM_DRIVER_LABEL,
    ),
    EnergySource.KEPLER: Dialect(
        source=EnergySource.KEPLER,
        energy=KEPLER_GPU_ENERGY,
        gauges={KEPLER_GPU_POWER: ("power_w", 1.0)},
        uuid_label="gpu_uuid",
        model_label="gpu_name",
        driver_label=None,
    ),
}
_ENERGY_FACTOR = {EnergySource.JOULETUNE: 1.0, EnergySource.DCGM: 1e-3, EnergySource.KEPLER: 1.0}


def dialect_of(source: EnergySource | str) -> Dialect:
    """The dialect of an energy source."""
    return _DIALECTS[EnergySource(source)]


@dataclass(frozen=True, kw_only=True)
class GpuFilter:
    """Which GPUs count: those whose UUID is listed (all when none is) and whose energy
    series carries every label value given."""

    uuids: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def admits(self, uuid: str, labels: Mapping[str, str]) -> bool:
        """True when a GPU with this UUID and energy-series labels counts."""
        if self.uuids and uuid not in self.uuids:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())

    def promql(self, dialect: Dialect) -> str:
        """The same choice as a PromQL label selector, e.g. `{UUID=~"GPU-a|GPU-b",pod="x"}`."""
        matchers = [f'{k}="{_escape(v)}"' for k, v in sorted(self.labels.items())]
        if self.uuids:
            either = "|".join(sorted(_escape(u) for u in self.uuids))
            matchers.insert(0, f'{dialect.uuid_label}=~"{either}"')
        return "{" + ",".join(matchers) + "}"


Sample = tuple[str, Mapping[str, str], float]
"""(sample name, labels, value)."""


def parse_text(text: str, dialect: Dialect, chosen: GpuFilter) -> tuple[list[GpuReading], str]:
    """The chosen GPUs in one `/metrics` text, and the driver version ("" when not given).

    Raises:
        ValueError: the text is not Prometheus exposition format.
    """
    samples: list[Sample] = []
    driver = ""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # prometheus_client's parser names a counter's samples `..._total`, whether the
            # exporter did (jouletune, Kepler) or not (dcgm-exporter).
            name = family.name if family.type == "counter" else s.name
            samples.append((name, s.labels, float(s.value)))
            driver = driver or (s.labels.get(dialect.driver_label or "", ""))
    return readings(samples, dialect, chosen), driver


def readings(samples: Iterable[Sample], dialect: Dialect, chosen: GpuFilter) -> list[GpuReading]:
    """The chosen GPUs' readings among samples taken at one instant; GPUs without an energy
    sample are left out. A GPU seen on several series (MIG instances) counts once."""
    energy_name = dialect.energy.removesuffix("_total")
    energy: dict[str, tuple[float, Mapping[str, str]]] = {}
    gauges: dict[str, dict[str, float]] = {}
    for name, labels, value in samples:
        uuid = labels.get(dialect.uuid_label) or labels.get("gpu", "")
        if name.removesuffix("_total") == energy_name:
            if chosen.admits(uuid, labels):
                energy.setdefault(uuid, (value * _ENERGY_FACTOR[dialect.source], labels))
        elif name in dialect.gauges:
            attr, factor = dialect.gauges[name]
            gauges.setdefault(uuid, {}).setdefault(attr, value * factor)
    return [
        GpuReading(
            gpu=labels.get("gpu", ""),
            uuid=uuid,
            model_name=labels.get(dialect.model_label, ""),
            energy_j=energy_j,
            **gauges.get(uuid, {}),
        )
        for uuid, (energy_j, labels) in sorted(energy.items())
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
