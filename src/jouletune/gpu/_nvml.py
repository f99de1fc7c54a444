"""Real GPUs through NVML: the only module in jouletune that calls `pynvml`.

NVML's units are converted here, once: mJ → J, mW → W, MHz → Hz, percent → ratio. Every
`pynvml.NVMLError` leaves this module as a `GpuError` subclass (see `_translate`).

SM clock locks: `nvmlDeviceSetGpuLockedClocks(handle, T, T)` pins the clock at T (as
`nvidia-smi -lgc T,T`) and `nvmlDeviceResetGpuLockedClocks` removes the lock. NVML has no call
that reads an active lock back, so a lock jouletune set is known only from jouletune's own
record of it (`ClockLocks`, `LimitStore`), and undoing it means resetting: a lock someone
else set before jouletune ran is not seen, and is removed by that reset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import pynvml

from jouletune.gpu._errors import GpuError, GpuPermissionError, NvmlUnavailableError
from jouletune.gpu._select import GpuSelector, resolve_selection
from jouletune.gpu._types import GpuSample, PowerLimitRange, SmClockRange

__all__ = ["NvmlGpu", "nvml_versions", "open_nvml_gpus"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Captured at import so that tests which replace `pynvml` with an autospec mock still raise and
# catch the real exception class and compare against the real integer codes.
_NVMLError: type[Exception] = pynvml.NVMLError
_NOT_SUPPORTED: int = pynvml.NVML_ERROR_NOT_SUPPORTED
_NO_PERMISSION: int = pynvml.NVML_ERROR_NO_PERMISSION
_UNAVAILABLE_CODES: frozenset[int] = frozenset(
    {
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_UNINITIALIZED,
    }
)
_CLOCK_SM: int = pynvml.NVML_CLOCK_SM
_TEMPERATURE_GPU: int = pynvml.NVML_TEMPERATURE_GPU

# Period of the power-integration fallback for GPUs without an energy counter. 100 ms keeps
# the thread's cost negligible while the integral of a ~1 s averaged power reading loses little.
_INTEGRATION_PERIOD_S = 0.1

_PERMISSION_HINT = "needs root or CAP_SYS_ADMIN (run the container privileged or as root)"


def _code(err: Exception) -> int | None:
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


def _translate(err: Exception, what: str) -> NoReturn:
    """Raise the jouletune exception for an NVMLError met while doing `what`."""
    code = _code(err)
    if code in _UNAVAILABLE_CODES:
        raise NvmlUnavailableError(
            f"NVML is unavailable ({err}) while {what}: is the NVIDIA driver loaded "
            "and libnvidia-ml.so.1 visible to this process?"
        ) from err
    if code == _NO_PERMISSION:
        raise GpuPermissionError(f"{what} {_PERMISSION_HINT}; NVML said: {err}") from err
    raise GpuError(f"NVML failed while {what}: {err}") from err


def _call(what: str, fn: Callable[..., _T], *args: Any) -> _T:
    """Call one pynvml function, translating its errors."""
    try:
        return fn(*args)
    except _NVMLError as err:
        _translate(err, what)


def _probe(fn: Callable[..., Any], *args: Any) -> bool:
    """True when `fn` works on this GPU, False when NVML says it is not supported."""
    try:
        fn(*args)
    except _NVMLError as err:
        if _code(err) == _NOT_SUPPORTED:
            return False
        raise
    return True


def _init() -> None:
    try:
        pynvml.nvmlInit()
    except _NVMLError as err:
        _translate(err, "initialising NVML")
    except OSError as err:  # a broken libnvidia-ml.so can fail in ctypes itself
        raise NvmlUnavailableError(f"NVML is unavailable: {err}") from err


def open_nvml_gpus(selection: Sequence[GpuSelector] | None = None) -> list[NvmlGpu]:
    """Initialise NVML and open the GPUs `selection` names (indices or UUIDs; default all).

    Raises:
        NvmlUnavailableError: NVML or the driver is missing, or the host has no GPU.
        ValueError: a selector names no GPU of this host.
    """
    _init()
    count = _call("counting GPUs", pynvml.nvmlDeviceGetCount)
    if count == 0:
        raise NvmlUnavailableError("NVML found no GPU on this host")
    # UUIDs are read only when asked for: a GPU that fails to answer must not stop an
    # exporter that was told to read others by index.
    if selection is not None and any(isinstance(s, str) for s in selection):
        uuids = {i: _uuid(i) for i in range(count)}
    else:
        uuids = {i: "" for i in range(count)}
    return [NvmlGpu(index=i) for i in resolve_selection(selection, uuids, "this host")]


def _uuid(index: int) -> str:
    handle = _call(f"opening GPU {index}", pynvml.nvmlDeviceGetHandleByIndex, index)
    return str(_call(f"reading GPU {index}'s UUID", pynvml.nvmlDeviceGetUUID, handle))


def nvml_versions() -> dict[str, str]:
    """The driver version and the CUDA version the driver supports, as NVML reports them."""
    _init()
    cuda = int(_call("reading the CUDA version", pynvml.nvmlSystemGetCudaDriverVersion))
    return {
        "driver": str(_call("reading the driver version", pynvml.nvmlSystemGetDriverVersion)),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
    }


class NvmlGpu:
    """A real GPU read through NVML. Create with `open_nvml_gpus()` (it initialises NVML).

    `sample().power_limit_w` is the power-management limit: the value `set_power_limit_w`
    writes and `power_limit()` restores (NVML's enforced limit equals it unless another
    limiter, e.g. a chassis power brake, is active).

    What a GPU cannot report (NOT_SUPPORTED) is probed once here and reads as None after;
    a GPU without the total-energy counter (before Volta) integrates sampled power in a
    background thread instead, and its samples say `energy_estimated=True`.
    """

    def __init__(self, *, index: int) -> None:
        self._index = index
        where = f"opening GPU {index}"
        self._handle = _call(where, pynvml.nvmlDeviceGetHandleByIndex, index)
        self._uuid = str(_call(where, pynvml.nvmlDeviceGetUUID, self._handle))
        self._name = str(_call(where, pynvml.nvmlDeviceGetName, self._handle))
        self._memory_total_bytes = int(
            _call(where, pynvml.nvmlDeviceGetMemoryInfo, self._handle).total
        )
        try:
            self._has = self._probe_features()
        except _NVMLError as err:
            _translate(err, where)
        self._clock_range: SmClockRange | None = None  # read once, on first use
        self._integrator: _PowerIntegrator | None = None
        if not self._has["energy"]:
            if not self._has["power"]:
                raise GpuError(f"GPU {index} ({self._name}) reports neither energy nor power")
            _log.warning(
                "GPU %d (%s) has no energy counter: energy is integrated from power readings "
                "every %.0f ms and flagged energy_estimated",
                index,
                self._name,
                _INTEGRATION_PERIOD_S * 1000,
            )
            self._integrator = _PowerIntegrator(read_power_w=self._read_power_w)

    def __repr__(self) -> str:
        return f"NvmlGpu(index={self._index}, name={self._name!r}, uuid={self._uuid!r})"

    @property
    def index(self) -> int:
        """NVML's index of this GPU."""
        return self._index

    @property
    def uuid(self) -> str:
        """NVML's UUID (`GPU-…`)."""
        return self._uuid

    @property
    def name(self) -> str:
        """Model name, e.g. `NVIDIA H100 80GB HBM3`."""
        return self._name

    @property
    def energy_estimated(self) -> bool:
        """True when this GPU lacks the energy counter and energy is integrated power."""
        return self._integrator is not None

    def sample(self) -> GpuSample:
        """Read energy, power, limit, clock, utilisation, memory and temperature now."""
        h = self._handle
        has = self._has
        with _translated(f"reading GPU {self._index}"):
            if self._integrator is None:
                energy_j = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
            else:
                energy_j = self._integrator.energy_j()
            power_w = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
            limit_mw = pynvml.nvmlDeviceGetPowerManagementLimit(h) if has["limit"] else None
            clock_mhz = pynvml.nvmlDeviceGetClockInfo(h, _CLOCK_SM) if has["clock"] else None
            util_pct = pynvml.nvmlDeviceGetUtilizationRates(h).gpu if has["util"] else None
            memory_used = pynvml.nvmlDeviceGetMemoryInfo(h).used
            temp_c = pynvml.nvmlDeviceGetTemperature(h, _TEMPERATURE_GPU) if has["temp"] else None
        return GpuSample(
            index=self._index,
            uuid=self._uuid,
            name=self._name,
            energy_j=energy_j,
            power_w=power_w,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            sm_clock_hz=None if clock_mhz is None else clock_mhz * 1e6,
            utilization_ratio=None if util_pct is None else util_pct / 100.0,
            memory_used_bytes=int(memory_used),
            memory_total_bytes=self._memory_total_bytes,
            temperature_c=None if temp_c is None else float(temp_c),
            timestamp_s=time.time(),
            energy_estimated=self._integrator is not None,
        )

    def power_limit_range(self) -> PowerLimitRange:
        """The limits NVML accepts for this GPU, and its default limit."""
        where = f"reading GPU {self._index}'s power-limit range"
        min_mw, max_mw = _call(
            where, pynvml.nvmlDeviceGetPowerManagementLimitConstraints, self._handle
        )
        default_mw = _call(where, pynvml.nvmlDeviceGetPowerManagementDefaultLimit, self._handle)
        return PowerLimitRange(
            min_w=min_mw / 1000.0, max_w=max_mw / 1000.0, default_w=default_mw / 1000.0
        )

    def set_power_limit_w(self, watts: float) -> None:
        """Set the power-management limit (needs root or CAP_SYS_ADMIN); use `power_limit()`."""
        _call(
            f"setting GPU {self._index}'s power limit to {watts:g} W",
            pynvml.nvmlDeviceSetPowerManagementLimit,
            self._handle,
            round(watts * 1000),
        )

    def sm_clock_range(self) -> SmClockRange:
        """The lowest and highest graphics clock NVML lists for any of this GPU's memory
        clocks: the clocks `nvmlDeviceSetGpuLockedClocks` accepts."""
        if self._clock_range is None:
            where = f"reading GPU {self._index}'s supported clocks"
            memory = _call(where, pynvml.nvmlDeviceGetSupportedMemoryClocks, self._handle)
            clocks = {
                int(mhz)
                for mem_mhz in memory
                for mhz in _call(
                    where, pynvml.nvmlDeviceGetSupportedGraphicsClocks, self._handle, mem_mhz
                )
            }
            if not clocks:
                raise GpuError(
                    f"GPU {self._index} ({self._name}) lists no supported graphics clocks: "
                    "its SM clock cannot be locked"
                )
            self._clock_range = SmClockRange(min_mhz=min(clocks), max_mhz=max(clocks))
        return self._clock_range

    def set_sm_clock_lock_mhz(self, mhz: int | None) -> None:
        """Lock the SM clock at `mhz` (min = max), or reset the lock (None); needs root or
        CAP_SYS_ADMIN. Use `clock_lock()`."""
        if mhz is None:
            _call(
                f"resetting GPU {self._index}'s locked clocks",
                pynvml.nvmlDeviceResetGpuLockedClocks,
                self._handle,
            )
            return
        _call(
            f"locking GPU {self._index}'s SM clock at {mhz} MHz",
            pynvml.nvmlDeviceSetGpuLockedClocks,
            self._handle,
            mhz,
            mhz,
        )

    def close(self) -> None:
        """Stop the power-integration thread, if this GPU has one."""
        if self._integrator is not None:
            self._integrator.stop()

    def _probe_features(self) -> dict[str, bool]:
        h = self._handle
        return {
            "energy": _probe(pynvml.nvmlDeviceGetTotalEnergyConsumption, h),
            "power": _probe(pynvml.nvmlDeviceGetPowerUsage, h),
            "limit": _probe(pynvml.nvmlDeviceGetPowerManagementLimit, h),
            "clock": _probe(pynvml.nvmlDeviceGetClockInfo, h, _CLOCK_SM),
            "util": _probe(pynvml.nvmlDeviceGetUtilizationRates, h),
            "temp": _probe(pynvml.nvmlDeviceGetTemperature, h, _TEMPERATURE_GPU),
        }

    def _read_power_w(self) -> float:
        return float(pynvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except _NVMLError as err:
        _translate(err, what)


class _PowerIntegrator:
    """Trapezoidal integral of sampled power, for GPUs without an energy counter."""

    def __init__(self, *, read_power_w: Callable[[], float]) -> None:
        self._read_power_w = read_power_w
        self._lock = threading.Lock()
        self._energy_j = 0.0
        self._last = (time.monotonic(), read_power_w())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jouletune-power", daemon=True)
        self._thread.start()

    def energy_j(self) -> float:
        """Energy integrated so far, plus the part since the last tick at the last power."""
        with self._lock:
            last_t, last_w = self._last
            return self._energy_j + last_w * (time.monotonic() - last_t)

    def stop(self) -> None:
        """End the thread and wait for it."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(_INTEGRATION_PERIOD_S):
            try:
                power_w = self._read_power_w()
            except _NVMLError as err:
                _log.warning("power integration skipped a reading: %s", err)
                continue
            now = time.monotonic()
            with self._lock:
                last_t, last_w = self._last
                self._energy_j += (last_w + power_w) / 2.0 * (now - last_t)
                self._last = (now, power_w)
