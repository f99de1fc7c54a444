"""dcgm-exporter's exposition, for `jouletune exporter --format dcgm`.

Serves the same GPU reads under NVIDIA dcgm-exporter's names, units and labels (release
4.6.0-4.8.3, `etc/default-counters.csv` at commit 7ad5832), so the load generator's
`--energy-source dcgm` runs end to end where no dcgm-exporter is installed: on a laptop with
the simulator, or on a GPU host without DCGM.

Written by hand rather than through prometheus_client: dcgm-exporter declares its energy
field a `counter` without the `_total` suffix and prints integer fields as integers, and
prometheus_client renames counters to `..._total`. Byte-for-byte like dcgm-exporter is the
point of this format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jouletune.contract import (
    DCGM_DRIVER_LABEL,
    DCGM_ENERGY,
    DCGM_FB_USED,
    DCGM_GPU_TEMP,
    DCGM_GPU_UTIL,
    DCGM_POWER,
    DCGM_POWER_LIMIT,
    DCGM_SM_CLOCK,
)
from jouletune.gpu import GpuSample

__all__ = ["DcgmLabels", "render_dcgm"]

_MIB = 2**20


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    help: str
    value: Callable[[GpuSample], float | int | None]


def _scaled(value: float | None, factor: float) -> int | None:
    return None if value is None else round(value * factor)


# In default-counters.csv order. The power limit is not a default field (4.8.4 adds it as an
# opt-in); it is served because a cap-bound check needs it, as a user who opts in would have.
_FIELDS: tuple[_Field, ...] = (
    _Field(DCGM_SM_CLOCK, "gauge", "SM clock frequency (in MHz).",
           lambda s: _scaled(s.sm_clock_hz, 1e-6)),
    _Field(DCGM_GPU_TEMP, "gauge", "GPU temperature (in C).",
           lambda s: _scaled(s.temperature_c, 1)),
    _Field(DCGM_POWER, "gauge", "Power draw (in W).", lambda s: s.power_w),
    _Field(DCGM_ENERGY, "counter", "Total energy consumption since boot (in mJ).",
           lambda s: round(s.energy_j * 1000)),
    _Field(DCGM_GPU_UTIL, "gauge", "GPU utilization (in %).",
           lambda s: _scaled(s.utilization_ratio, 100)),
    _Field(DCGM_FB_USED, "gauge", "Framebuffer memory used (in MiB).",
           lambda s: s.memory_used_bytes // _MIB),
    _Field(DCGM_POWER_LIMIT, "gauge", "Current power limit (in W).",
           lambda s: s.power_limit_w),
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DcgmLabels:
    """The labels dcgm-exporter adds beside the GPU's own: host, driver, and the pod the GPU
    belongs to when it maps GPUs to pods (empty values are left out)."""

    hostname: str
    driver_version: str
    pod: str = ""
    namespace: str = ""
    container: str = ""


def render_dcgm(samples: Sequence[GpuSample], labels: DcgmLabels) -> str:
    """The `/metrics` text dcgm-exporter would serve for these GPU reads."""
    lines: list[str] = []
    for field in _FIELDS:
        series = [(s, v) for s in samples if (v := field.value(s)) is not None]
        if not series:
            continue
        lines += [f"# HELP {field.name} {field.help}", f"# TYPE {field.name} {field.kind}"]
        lines += [f"{field.name}{{{_labels(s, labels)}}} {_number(v)}" for s, v in series]
    return "\n".join(lines) + "\n"


def _labels(sample: GpuSample, extra: DcgmLabels) -> str:
    # dcgm-exporter's order: the GPU's identity, the host, then other labels sorted by name.
    pairs = [
        ("gpu", str(sample.index)),
        ("UUID", sample.uuid),
        ("pci_bus_id", ""),
        ("device", f"nvidia{sample.index}"),
        ("modelName", sample.name),
        ("hostname", extra.hostname),
        (DCGM_DRIVER_LABEL, extra.driver_version),
        ("container", extra.container),
        ("namespace", extra.namespace),
        ("pod", extra.pod),
    ]
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs if v or k == "pci_bus_id")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    # Integer fields print as integers, doubles with six decimals (Go's %f), as DCGM does.
    return str(value) if isinstance(value, int) else f"{value:f}"
