"""The simulated GPU: a power model with clock throttling, and `SimulatedGpu`, which satisfies
the `Gpu` protocol and integrates its energy counter exactly (the GPU models it simulates are
in `_catalog.py`).

The sim-server's engine hands each step's work (`KernelWork`: bytes moved, flops, and the
roofline time of each kernel group) to every TP rank's `SimulatedGpu.run_step`. The GPU picks
the highest SM clock whose power fits under its power limit, and no higher than its SM clock
lock when it has one, which sets the step's duration, and records the step as one
constant-power segment. Between steps the GPU draws its idle power.

Both knobs act through the clock, in one model: a step runs at min(lock, the highest clock
whose power fits the limit). A power limit lowers the clock only when the step would draw
more than the limit; a lock holds it at T whatever the step draws. So at a low batch, where a
decode step draws far below any usual limit, a cap changes nothing while a lock still lowers
the clock; and since memory-bound kernel groups take as long at any clock, such steps barely
slow down while the s³ term of their power falls. Idle power does not depend on the lock:
the model's idle powers are constants and no measurement of idle power under a lock exists,
so a lock is credited nothing for idle time (a lock only changes the clock an idle GPU
reports). The energy counter is the exact integral of that piecewise-constant power, so energy
between any two instants is known to float precision (`energy_between`).

Power model (constants and their sources in docs/simulator.md):

    P(f) = P_idle_loaded + s³·(P_active·u_busy + P_tensor·u_tensor) + P_dram·u_dram

with s = f / f_max and the utilizations taken over the step: u_busy the fraction of time any
kernel runs, u_tensor the fraction the math pipes are busy (compute time at clock f over step
time), u_dram the fraction DRAM is busy. Dynamic power of clocked logic scales with f·V², and
V tracks f in the DVFS range, hence s³; DRAM power does not depend on the SM clock.
`t_step(f)` stretches only the compute-bound part of each kernel group, so a binding cap slows
compute-bound (prefill) steps far more than memory-bound (decode) ones.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jouletune.gpu._catalog import (
    GPU_CATALOG,
    GpuModel,
    PowerCoefficients,
    gpu_by_name,
    gpu_model,
)
from jouletune.gpu._errors import GpuError
from jouletune.gpu._types import GpuSample, PowerLimitRange, SmClockRange

__all__ = [
    "GPU_CATALOG",
    "GpuModel",
    "KernelWork",
    "PowerCoefficients",
    "SimulatedGpu",
    "StepOutcome",
    "gpu_by_name",
    "gpu_model",
]

# NVML reports power averaged over about one second on Hopper (docs/contract.md); the sample's
# power_w and utilization_ratio use the same trailing window so they read like NVML's.
_AVERAGING_WINDOW_S = 1.0
_THERMAL_LAG_S = 20.0
# History older than this is dropped; /sim/truth cannot look further back.
_HISTORY_RETENTION_S = 6 * 3600.0
# Clock search resolution; H100 application clocks move in 15 MHz steps, so 1 MHz is plenty.
_CLOCK_RESOLUTION_HZ = 1e6


@dataclass(frozen=True, kw_only=True)
class KernelWork:
    """The work one engine step puts on one GPU.

    Attributes:
        groups: per kernel group (linear layers, attention, ...), a pair
            (memory-bound time in s, compute-bound time at max SM clock in s); a group takes
            the larger of the two (roofline), and only the compute part stretches as the
            clock drops.
        fixed_gpu_s: GPU time that depends on neither (all-reduce over the interconnect).
        host_s: time the GPU waits on the host inside the step (scheduling, sampling).
        bytes_moved: DRAM bytes read and written by the step.
        flops: floating-point operations of the step.
    """

    groups: Sequence[tuple[float, float]]
    fixed_gpu_s: float
    host_s: float
    bytes_moved: float
    flops: float

    def gpu_time_s(self, clock_ratio: float) -> float:
        """Time the GPU is busy at `clock_ratio` = f / f_max."""
        busy = self.fixed_gpu_s
        for mem_s, comp_s in self.groups:
            busy += max(mem_s, comp_s / clock_ratio)
        return busy

    def dram_time_s(self) -> float:
        """Time DRAM is busy (the memory-bound time of every group)."""
        return sum(mem_s for mem_s, _ in self.groups)

    def tensor_time_s(self, clock_ratio: float) -> float:
        """Time the math pipes are busy at `clock_ratio` = f / f_max."""
        return sum(comp_s for _, comp_s in self.groups) / clock_ratio


@dataclass(frozen=True, kw_only=True)
class StepOutcome:
    """What one step cost on one GPU.

    Attributes:
        duration_s: wall time of the step, seconds.
        power_w: average power over the step, watts.
        sm_clock_hz: the SM clock the step ran at, hertz.
        capped: True when the power limit lowered the clock (or stretched the step).
    """

    duration_s: float
    power_w: float
    sm_clock_hz: float
    capped: bool


@dataclass
class _History:
    """Cumulative energy and busy time at segment boundaries, for exact integrals."""

    times_s: array[float] = field(default_factory=lambda: array("d"))
    energy_j: array[float] = field(default_factory=lambda: array("d"))
    busy_s: array[float] = field(default_factory=lambda: array("d"))
    # power and busy fraction in force from each boundary until the next
    power_w: array[float] = field(default_factory=lambda: array("d"))
    busy_ratio: array[float] = field(default_factory=lambda: array("d"))

    def append(self, t_s: float, e_j: float, b_s: float, p_w: float, ratio: float) -> None:
        self.times_s.append(t_s)
        self.energy_j.append(e_j)
        self.busy_s.append(b_s)
        self.power_w.append(p_w)
        self.busy_ratio.append(ratio)

    def prune(self, before_s: float) -> None:
        cut = bisect.bisect_left(self.times_s, before_s) - 1
        if cut > 1024:  # prune in bulk: deleting from the front of an array is O(n)
            for arr in (self.times_s, self.energy_j, self.busy_s, self.power_w, self.busy_ratio):
                del arr[:cut]


class SimulatedGpu:
    """One simulated GPU; create with `SimulatedGpu(model=gpu_model("h100-80gb"), index=0)`.

    Args:
        model: the GPU model from `GPU_CATALOG`.
        index: the GPU's index on its (simulated) host.
        clock: returns the current time in unix seconds; `time.time` for a live server, a
            virtual clock for simulated-time runs.
        memory_used_bytes: device memory in use once a server is loaded (weights + KV pool).
    """

    def __init__(
        self,
        *,
        model: GpuModel,
        index: int,
        clock: Callable[[], float] = time.time,
        memory_used_bytes: int = 0,
    ) -> None:
        self.model = model
        self._index = index
        self._uuid = f"GPU-sim-{model.key}-{index:04d}"
        self._clock = clock
        self._limit_w = model.power_limits.default_w
        self._memory_used_bytes = memory_used_bytes
        self._loaded = False
        self._lock_hz: float | None = None
        self._clock_hz = model.max_sm_clock_hz
        start = clock()
        # Energy is exact: committed up to `_t_s`; from there the GPU idles until the next
        # step segment, whose end may lie in the future (the live server sleeps through it).
        self._t_s = start
        self._energy_j = 0.0
        self._busy_s = 0.0
        self._history = _History()
        self._history.append(start, 0.0, 0.0, self.idle_power_w, 0.0)

    # --- the Gpu protocol -------------------------------------------------------------------

    @property
    def index(self) -> int:
        """This GPU's index on its host."""
        return self._index

    @property
    def uuid(self) -> str:
        """A stable UUID-like identifier."""
        return self._uuid

    @property
    def name(self) -> str:
        """The model name NVML would report."""
        return self.model.name

    def sample(self) -> GpuSample:
        """Read every value of `GpuSample` now; power and utilization over the last second."""
        now = self._clock()
        window_s = min(_AVERAGING_WINDOW_S, max(now - self._history.times_s[0], 0.0))
        if window_s > 0:
            power_w = (self.energy_at(now) - self.energy_at(now - window_s)) / window_s
            util = (self.busy_at(now) - self.busy_at(now - window_s)) / window_s
        else:
            power_w, util = self.idle_power_w, 0.0
        return GpuSample(
            index=self._index,
            uuid=self._uuid,
            name=self.model.name,
            energy_j=self.energy_at(now),
            power_w=power_w,
            power_limit_w=self._limit_w,
            sm_clock_hz=self._clock_hz if now < self._t_s else self._idle_clock_hz(),
            utilization_ratio=min(max(util, 0.0), 1.0),
            memory_used_bytes=self._memory_used_bytes if self._loaded else 0,
            memory_total_bytes=self.model.memory_bytes,
            temperature_c=self._temperature_c(now),
            timestamp_s=now,
        )

    def power_limit_range(self) -> PowerLimitRange:
        """The power limits this GPU accepts."""
        return self.model.power_limits

    def _idle_clock_hz(self) -> float:
        # A lock set while the GPU idles shows at once; a running step keeps its own clock.
        return min(self._clock_hz, self.top_clock_hz)

    def _temperature_c(self, now: float) -> float:
        # Not calibrated: a thermal resistance over the power of the last tens of seconds, so
        # the die warms up after load starts as a heatsink's thermal mass makes it do.
        span_s = min(_THERMAL_LAG_S, now - self._history.times_s[0])
        mean_w = (
            self.energy_between(now - span_s, now) / span_s if span_s > 0 else self.idle_power_w
        )
        return 30.0 + 0.06 * mean_w

    def set_power_limit_w(self, watts: float) -> None:
        """Set the power limit; it applies from the next step on.

        Raises:
            GpuError: `watts` is outside `power_limit_range()` (NVML's INVALID_ARGUMENT).
        """
        rng = self.model.power_limits
        if not (math.isfinite(watts) and rng.min_w <= watts <= rng.max_w):
            raise GpuError(
                f"power limit {watts:g} W is outside {self.model.name}'s range "
                f"{rng.min_w:g}-{rng.max_w:g} W"
            )
        self._limit_w = float(watts)

    def sm_clock_range(self) -> SmClockRange:
        """The SM clocks this GPU can be locked at: the model's lowest to highest clock."""
        return SmClockRange(
            min_mhz=round(self.model.min_sm_clock_hz / 1e6),
            max_mhz=round(self.model.max_sm_clock_hz / 1e6),
        )

    def set_sm_clock_lock_mhz(self, mhz: int | None) -> None:
        """Lock the SM clock at `mhz` (None: unlock); it applies from the next step on.

        Raises:
            GpuError: `mhz` is outside `sm_clock_range()` (NVML's INVALID_ARGUMENT).
        """
        if mhz is None:
            self._lock_hz = None
            return
        rng = self.sm_clock_range()
        if not rng.min_mhz <= mhz <= rng.max_mhz:
            raise GpuError(
                f"SM clock {mhz} MHz is outside {self.model.name}'s supported clocks "
                f"{rng.min_mhz}-{rng.max_mhz} MHz"
            )
        self._lock_hz = mhz * 1e6

    # --- the simulator's side ---------------------------------------------------------------

    @property
    def sm_clock_lock_mhz(self) -> int | None:
        """The SM clock lock in force, MHz; None when unlocked."""
        return None if self._lock_hz is None else round(self._lock_hz / 1e6)

    @property
    def top_clock_hz(self) -> float:
        """The highest clock a step may run at: the lock, or the model's maximum."""
        f_max = self.model.max_sm_clock_hz
        return f_max if self._lock_hz is None else min(self._lock_hz, f_max)

    @property
    def power_limit_w(self) -> float:
        """The power limit in force, watts."""
        return self._limit_w

    @property
    def idle_power_w(self) -> float:
        """Power with no kernels running: higher once a server holds a CUDA context."""
        return self.model.idle_loaded_w if self._loaded else self.model.idle_w

    def set_loaded(self, loaded: bool, *, at_s: float | None = None) -> None:
        """Mark a serving process as holding (or releasing) this GPU from `at_s` on."""
        t_s = self._clock() if at_s is None else at_s
        self._advance_idle(t_s)
        self._loaded = loaded
        self._history.append(self._t_s, self._energy_j, self._busy_s, self.idle_power_w, 0.0)

    def plan_step(self, work: KernelWork) -> StepOutcome:
        """The duration, power and clock of `work` under the current power limit and clock
        lock (pure)."""
        return plan_step(self.model, work, self._limit_w, self.idle_power_w, lock_hz=self._lock_hz)

    def run_step(self, work: KernelWork, *, start_s: float) -> StepOutcome:
        """Run `work` starting at `start_s` (not before the previous step's end); record it."""
        return self.record_step(self.plan_step(work), work, start_s=start_s)

    def record_step(self, outcome: StepOutcome, work: KernelWork, *, start_s: float) -> StepOutcome:
        """Record a step planned elsewhere (TP ranks share one plan) as this GPU's segment."""
        self._advance_idle(start_s)
        busy_s = min(
            work.gpu_time_s(outcome.sm_clock_hz / self.model.max_sm_clock_hz), outcome.duration_s
        )
        ratio = busy_s / outcome.duration_s if outcome.duration_s > 0 else 0.0
        self._history.append(self._t_s, self._energy_j, self._busy_s, outcome.power_w, ratio)
        self._t_s += outcome.duration_s
        self._energy_j += outcome.power_w * outcome.duration_s
        self._busy_s += busy_s
        self._clock_hz = outcome.sm_clock_hz
        self._history.append(self._t_s, self._energy_j, self._busy_s, self.idle_power_w, 0.0)
        self._history.prune(self._t_s - _HISTORY_RETENTION_S)
        return outcome

    def energy_at(self, t_s: float) -> float:
        """The energy counter at unix time `t_s` (exact integral of the modelled power), J."""
        return self._integral(t_s, self._history.energy_j, self._history.power_w)

    def busy_at(self, t_s: float) -> float:
        """Cumulative seconds the GPU ran kernels, up to `t_s`."""
        return self._integral(t_s, self._history.busy_s, self._history.busy_ratio)

    def energy_between(self, start_s: float, end_s: float) -> float:
        """Joules drawn between two unix times."""
        return self.energy_at(end_s) - self.energy_at(start_s)

    def _integral(self, t_s: float, cumulative: array[float], rate: array[float]) -> float:
        times = self._history.times_s
        i = bisect.bisect_right(times, t_s) - 1
        if i < 0:
            return cumulative[0]
        return cumulative[i] + rate[i] * (t_s - times[i])

    def _advance_idle(self, t_s: float) -> None:
        # Steps never overlap; a start before the last end means the caller lost its place.
        assert t_s >= self._t_s - 1e-9, f"step starts at {t_s} before the last ended {self._t_s}"
        if t_s > self._t_s:
            self._energy_j += self.idle_power_w * (t_s - self._t_s)
            self._t_s = t_s
            self._clock_hz = self.top_clock_hz


def plan_step(
    model: GpuModel,
    work: KernelWork,
    limit_w: float,
    idle_w: float,
    *,
    lock_hz: float | None = None,
) -> StepOutcome:
    """Run `work` at the highest clock, no higher than `lock_hz` (an SM clock lock), whose
    average power fits under `limit_w`.

    A lock pins the clock (`nvidia-smi -lgc T,T`), but a power limit still wins: a step that
    would draw more than the limit at the lock runs at the lower clock that fits, as a real
    GPU's power brake overrides locked clocks. `capped` says the limit lowered the clock.
    When even the lowest clock draws too much (a very low cap on memory-bound work), the
    step is stretched until its average power equals the cap: the memory system then idles
    part of the time, as a throttled GPU's does.
    """
    f_max = model.max_sm_clock_hz
    f_top = f_max if lock_hz is None else min(lock_hz, f_max)

    def at(clock_hz: float) -> tuple[float, float]:
        s = clock_hz / f_max
        gpu_s = work.gpu_time_s(s)
        duration_s = gpu_s + work.host_s
        if duration_s <= 0:
            return 0.0, idle_w
        coeffs = model.power
        dyn_j = (
            s**3 * (coeffs.active_w * gpu_s + coeffs.tensor_w * work.tensor_time_s(s))
            + coeffs.dram_w * work.dram_time_s()
        )
        return duration_s, idle_w + dyn_j / duration_s

    duration_s, power_w = at(f_top)
    if power_w <= limit_w:
        return StepOutcome(duration_s=duration_s, power_w=power_w, sm_clock_hz=f_top, capped=False)
    lo, hi = model.min_sm_clock_hz, f_top
    duration_s, power_w = at(lo)
    if power_w > limit_w:
        dyn_j = (power_w - idle_w) * duration_s
        return StepOutcome(
            duration_s=max(dyn_j / (limit_w - idle_w), duration_s),
            power_w=limit_w,
            sm_clock_hz=lo,
            capped=True,
        )
    while hi - lo > _CLOCK_RESOLUTION_HZ:
        mid = 0.5 * (lo + hi)
        if at(mid)[1] <= limit_w:
            lo = mid
        else:
            hi = mid
    duration_s, power_w = at(lo)
    return StepOutcome(duration_s=duration_s, power_w=power_w, sm_clock_hz=lo, capped=True)
