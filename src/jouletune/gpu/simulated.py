"""The simulated GPU: a catalog of GPU models, a power model with clock throttling, and
`SimulatedGpu`, which satisfies the `Gpu` protocol and integrates its energy counter exactly.

The sim-server's engine hands each step's work (`KernelWork`: bytes moved, flops, and the
roofline time of each kernel group) to every TP rank's `SimulatedGpu.run_step`. The GPU picks
the highest SM clock whose power fits under its power limit, which sets the step's duration,
and records the step as one constant-power segment. Between steps the GPU draws its idle
power. The energy counter is the exact integral of that piecewise-constant power, so energy
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

from jouletune.gpu._errors import GpuError
from jouletune.gpu._types import GpuSample, PowerLimitRange

__all__ = [
    "GPU_CATALOG",
    "GpuModel",
    "KernelWork",
    "PowerCoefficients",
    "SimulatedGpu",
    "StepOutcome",
    "gpu_model",
]

# NVML reports power averaged over about one second on Hopper (docs/contract.md); the sample's
# power_w and utilization_ratio use the same trailing window so they read like NVML's.
_AVERAGING_WINDOW_S = 1.0
# History older than this is dropped; /sim/truth cannot look further back.
_HISTORY_RETENTION_S = 6 * 3600.0
# Clock search resolution; H100 application clocks move in 15 MHz steps, so 1 MHz is plenty.
_CLOCK_RESOLUTION_HZ = 1e6


@dataclass(frozen=True, kw_only=True)
class PowerCoefficients:
    """The dynamic part of the power model, per GPU.

    Attributes:
        active_w: clocked logic while any kernel runs, at the maximum SM clock, watts.
        tensor_w: math pipes fully busy, at the maximum SM clock, watts.
        dram_w: DRAM (HBM/GDDR) and its interface fully busy, watts.
    """

    active_w: float
    tensor_w: float
    dram_w: float


@dataclass(frozen=True, kw_only=True)
class GpuModel:
    """One kind of GPU: its datasheet figures and its power model.

    Attributes:
        key: catalog key, e.g. `h100-80gb` (the sim-server's `--gpu`).
        name: the name NVML reports.
        memory_bytes: device memory in total, bytes (NVML's `memory.total`).
        memory_bandwidth_bytes_s: peak DRAM bandwidth, bytes per second.
        bf16_dense_flops: peak dense bf16 tensor-core throughput at max SM clock, flop/s.
        max_sm_clock_hz: highest SM clock, hertz.
        min_sm_clock_hz: lowest SM clock the power controller throttles to, hertz.
        power_limits: power-limit range in watts (min, max, default).
        idle_w: power with no process on the GPU, watts.
        idle_loaded_w: power with a serving process loaded and no requests, watts.
        interconnect_bytes_s: per-GPU bandwidth for tensor-parallel all-reduce, bytes/s.
        allreduce_latency_s: fixed latency of one all-reduce, seconds.
        power: the dynamic power coefficients.
        calibrated: True where the power model was fitted to measurements of this GPU.
    """

    key: str
    name: str
    memory_bytes: int
    memory_bandwidth_bytes_s: float
    bf16_dense_flops: float
    max_sm_clock_hz: float
    min_sm_clock_hz: float
    power_limits: PowerLimitRange
    idle_w: float
    idle_loaded_w: float
    interconnect_bytes_s: float
    allreduce_latency_s: float
    power: PowerCoefficients
    calibrated: bool = False


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


def _h100_sxm() -> GpuModel:
    # Datasheet and measured figures with sources: docs/simulator.md, "GPU catalog".
    # Power coefficients: fitted to ../shared/calibration (benchmarks/sim_calibration.py).
    return GpuModel(
        key="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=81_559 * 2**20,
        memory_bandwidth_bytes_s=3.35e12,
        bf16_dense_flops=989e12,
        max_sm_clock_hz=1980e6,
        min_sm_clock_hz=345e6,
        power_limits=PowerLimitRange(min_w=200.0, max_w=700.0, default_w=700.0),
        idle_w=73.5,
        idle_loaded_w=121.0,
        interconnect_bytes_s=450e9,
        allreduce_latency_s=10e-6,
        power=_H100_POWER,
        calibrated=True,
    )


# Fitted to the H100 sweep; tensor_w refitted with the bf16 matmul measured at the 700 W cap
# (1369 MHz, 675 TFLOP/s), which prefill steps under the cap depend on; see docs/simulator.md.
_H100_POWER = PowerCoefficients(active_w=239.0, tensor_w=1450.0, dram_w=150.0)


def _scaled_power(tdp_w: float) -> PowerCoefficients:
    """Uncalibrated GPUs: the H100's coefficients scaled by TDP (an assumption, documented)."""
    ratio = tdp_w / 700.0
    return PowerCoefficients(
        active_w=_H100_POWER.active_w * ratio,
        tensor_w=_H100_POWER.tensor_w * ratio,
        dram_w=_H100_POWER.dram_w * ratio,
    )


GPU_CATALOG: dict[str, GpuModel] = {
    gpu.key: gpu
    for gpu in (
        _h100_sxm(),
        GpuModel(
            key="h200-141gb",
            name="NVIDIA H200",
            memory_bytes=143_771 * 2**20,
            memory_bandwidth_bytes_s=4.8e12,
            bf16_dense_flops=989e12,
            max_sm_clock_hz=1980e6,
            min_sm_clock_hz=345e6,
            power_limits=PowerLimitRange(min_w=200.0, max_w=700.0, default_w=700.0),
            idle_w=75.0,
            idle_loaded_w=121.0,
            interconnect_bytes_s=450e9,
            allreduce_latency_s=10e-6,
            power=_H100_POWER,
        ),
        GpuModel(
            key="a100-80gb",
            name="NVIDIA A100-SXM4-80GB",
            memory_bytes=81_920 * 2**20,
            memory_bandwidth_bytes_s=2.039e12,
            bf16_dense_flops=312e12,
            max_sm_clock_hz=1410e6,
            min_sm_clock_hz=210e6,
            power_limits=PowerLimitRange(min_w=100.0, max_w=400.0, default_w=400.0),
            idle_w=55.0,
            idle_loaded_w=80.0,
            interconnect_bytes_s=300e9,
            allreduce_latency_s=10e-6,
            power=_scaled_power(400.0),
        ),
        GpuModel(
            key="l40s-48gb",
            name="NVIDIA L40S",
            memory_bytes=46_068 * 2**20,
            memory_bandwidth_bytes_s=864e9,
            bf16_dense_flops=362e12,
            max_sm_clock_hz=2520e6,
            min_sm_clock_hz=210e6,
            power_limits=PowerLimitRange(min_w=100.0, max_w=350.0, default_w=350.0),
            idle_w=35.0,
            idle_loaded_w=70.0,
            interconnect_bytes_s=32e9,
            allreduce_latency_s=30e-6,
            power=_scaled_power(350.0),
        ),
    )
}


def gpu_model(key: str) -> GpuModel:
    """The catalog entry for `key`; raises ValueError naming the catalog when unknown."""
    try:
        return GPU_CATALOG[key.lower()]
    except KeyError:
        raise ValueError(
            f"unknown GPU {key!r}; the catalog has: {', '.join(sorted(GPU_CATALOG))}"
        ) from None


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
            sm_clock_hz=self._clock_hz,
            utilization_ratio=min(max(util, 0.0), 1.0),
            memory_used_bytes=self._memory_used_bytes if self._loaded else 0,
            memory_total_bytes=self.model.memory_bytes,
            # Not calibrated: a steady-state thermal resistance so the field moves with power.
            temperature_c=30.0 + 0.06 * power_w,
            timestamp_s=now,
        )

    def power_limit_range(self) -> PowerLimitRange:
        """The power limits this GPU accepts."""
        return self.model.power_limits

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

    # --- the simulator's side ---------------------------------------------------------------

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
        """The duration, power and clock of `work` under the current power limit (pure)."""
        return plan_step(self.model, work, self._limit_w, self.idle_power_w)

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
            self._clock_hz = self.model.max_sm_clock_hz


def plan_step(model: GpuModel, work: KernelWork, limit_w: float, idle_w: float) -> StepOutcome:
    """Run `work` at the highest clock whose average power fits under `limit_w`.

    When even the lowest clock draws too much (a very low cap on memory-bound work), the
    step is stretched until its average power equals the cap: the memory system then idles
    part of the time, as a throttled GPU's does.
    """
    f_max = model.max_sm_clock_hz

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

    duration_s, power_w = at(f_max)
    if power_w <= limit_w:
        return StepOutcome(duration_s=duration_s, power_w=power_w, sm_clock_hz=f_max, capped=False)
    lo, hi = model.min_sm_clock_hz, f_max
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
