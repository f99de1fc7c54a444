"""The values and the interface every GPU implementation shares.

`GpuSample` is one read of one GPU in SI units (J, W, Hz, bytes, °C); NVML's own units (mJ, mW,
MHz) never leave `_nvml.py`. Its JSON form (`to_json` / `from_json`) is what the sim-server's
`GET /sim/gpus` returns, so both sides of that HTTP contract use one definition. The one
exception is a clock lock's setting, in whole MHz: NVML takes locks in MHz and H100 clocks
move in 15 MHz steps, so a lock is a whole number of MHz everywhere (`nvidia-smi -lgc` too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Gpu", "GpuSample", "PowerLimitRange", "SmClockRange"]


@dataclass(frozen=True, kw_only=True)
class GpuSample:
    """One read of one GPU.

    Attributes:
        index: the GPU's index on its host (NVML's, or the sim-server's).
        uuid: stable identifier (`GPU-…` for NVML).
        name: model name, e.g. `NVIDIA H100 80GB HBM3`.
        energy_j: cumulative energy counter in joules since the driver loaded (or since the
            reader started, when `energy_estimated`); only differences are meaningful.
        power_w: power draw in watts as the GPU reports it (averaged over ~1 s on Hopper).
        power_limit_w: the enforced power limit in watts; None where the GPU cannot report it.
        sm_clock_hz: current SM clock in hertz; None where unsupported.
        utilization_ratio: fraction (0-1) of the last sample period a kernel ran; None where
            unsupported (e.g. MIG instances).
        memory_used_bytes: device memory in use, bytes.
        memory_total_bytes: device memory in total, bytes.
        temperature_c: GPU die temperature in degrees Celsius; None where unsupported.
        timestamp_s: `time.time()` when the read was taken, seconds.
        energy_estimated: True when the GPU has no energy counter (pre-Volta) and `energy_j`
            integrates sampled power instead; such energy is less accurate and is flagged.
    """

    index: int
    uuid: str
    name: str
    energy_j: float
    power_w: float
    power_limit_w: float | None
    sm_clock_hz: float | None
    utilization_ratio: float | None
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float | None
    timestamp_s: float
    energy_estimated: bool = False

    def to_json(self) -> dict[str, Any]:
        """This sample as a JSON-ready dict whose keys are the field names."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuSample:
        """Build a sample from `to_json`'s form; unknown keys are ignored, missing ones raise.

        Raises:
            ValueError: a required field is missing or has the wrong type.
        """
        try:
            return cls(
                index=int(data["index"]),
                uuid=str(data["uuid"]),
                name=str(data["name"]),
                energy_j=float(data["energy_j"]),
                power_w=float(data["power_w"]),
                power_limit_w=_opt_float(data.get("power_limit_w")),
                sm_clock_hz=_opt_float(data.get("sm_clock_hz")),
                utilization_ratio=_opt_float(data.get("utilization_ratio")),
                memory_used_bytes=int(data["memory_used_bytes"]),
                memory_total_bytes=int(data["memory_total_bytes"]),
                temperature_c=_opt_float(data.get("temperature_c")),
                timestamp_s=float(data["timestamp_s"]),
                energy_estimated=bool(data.get("energy_estimated", False)),
            )
        except KeyError as err:
            raise ValueError(f"GPU sample lacks field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"GPU sample has a malformed field: {err}") from None


@dataclass(frozen=True, kw_only=True)
class PowerLimitRange:
    """The power limits a GPU accepts, in watts: `min_w <= limit <= max_w`; `default_w` is
    the limit the GPU boots with."""

    min_w: float
    max_w: float
    default_w: float

    def __post_init__(self) -> None:
        if not self.min_w <= self.default_w <= self.max_w:
            raise ValueError(
                f"inconsistent power-limit range: {self.min_w=} {self.default_w=} {self.max_w=}"
            )

    def to_json(self) -> dict[str, float]:
        """This range as `{"min_w", "max_w", "default_w"}`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PowerLimitRange:
        """Build a range from `to_json`'s form; raises ValueError when it is malformed."""
        try:
            return cls(
                min_w=float(data["min_w"]),
                max_w=float(data["max_w"]),
                default_w=float(data["default_w"]),
            )
        except KeyError as err:
            raise ValueError(f"power-limit range lacks field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"power-limit range is malformed: {err}") from None


@dataclass(frozen=True, kw_only=True)
class SmClockRange:
    """The SM clocks a GPU can be locked at, in MHz: `min_mhz <= lock <= max_mhz` (NVML's
    supported graphics clocks, lowest and highest)."""

    min_mhz: int
    max_mhz: int

    def __post_init__(self) -> None:
        if not 0 < self.min_mhz <= self.max_mhz:
            raise ValueError(f"inconsistent SM clock range: {self.min_mhz=} {self.max_mhz=}")

    def to_json(self) -> dict[str, int]:
        """This range as `{"min_mhz", "max_mhz"}`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SmClockRange:
        """Build a range from `to_json`'s form; raises ValueError when it is malformed."""
        try:
            return cls(min_mhz=int(data["min_mhz"]), max_mhz=int(data["max_mhz"]))
        except KeyError as err:
            raise ValueError(f"SM clock range lacks field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"SM clock range is malformed: {err}") from None


@runtime_checkable
class Gpu(Protocol):
    """One GPU jouletune can read and whose power limit and SM clock lock it can change.

    Implementations: `NvmlGpu` (a real GPU), `RemoteGpu` (a sim-server's GPU over HTTP) and
    the simulator's in-process `SimulatedGpu`. Change limits only through `power_limit()`,
    and locks only through `clock_lock()`, which restore them.
    """

    @property
    def index(self) -> int:
        """The GPU's index on its host."""
        ...

    @property
    def uuid(self) -> str:
        """Stable identifier."""
        ...

    @property
    def name(self) -> str:
        """Model name."""
        ...

    def sample(self) -> GpuSample:
        """Read every value of `GpuSample` now."""
        ...

    def power_limit_range(self) -> PowerLimitRange:
        """The power limits this GPU accepts."""
        ...

    def set_power_limit_w(self, watts: float) -> None:
        """Set the power limit; callers use `power_limit()`, which validates and restores."""
        ...

    def sm_clock_range(self) -> SmClockRange:
        """The SM clocks this GPU can be locked at."""
        ...

    def set_sm_clock_lock_mhz(self, mhz: int | None) -> None:
        """Lock the SM clock at `mhz` (min = max = `mhz`, as `nvidia-smi -lgc T,T`); None
        removes the lock. Callers use `clock_lock()`, which validates and restores."""
        ...


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
