"""The GPU models the simulator knows: datasheet figures and fitted power coefficients.

Sources of every figure: docs/simulator.md, "GPU catalog". The H100's power coefficients are
fitted to the H100 calibration sweep (benchmarks/sim_calibration.py); the other GPUs scale
the H100's by TDP, an assumption documented there.
"""

from __future__ import annotations

from dataclasses import dataclass

from jouletune.gpu._types import PowerLimitRange

__all__ = ["GPU_CATALOG", "GpuModel", "PowerCoefficients", "gpu_by_name", "gpu_model"]


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
        fp8_dense_flops: peak dense FP8 tensor-core throughput at max SM clock, flop/s; None
            where the GPU has no FP8 tensor cores (vLLM then runs FP8 weights through
            weight-only kernels at the bf16 rate).
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
    fp8_dense_flops: float | None
    max_sm_clock_hz: float
    min_sm_clock_hz: float
    power_limits: PowerLimitRange
    idle_w: float
    idle_loaded_w: float
    interconnect_bytes_s: float
    allreduce_latency_s: float
    power: PowerCoefficients
    calibrated: bool = False


def _h100_sxm() -> GpuModel:
    # Datasheet and measured figures with sources: docs/simulator.md, "GPU catalog".
    # Power coefficients: fitted to ../shared/calibration (benchmarks/sim_calibration.py).
    return GpuModel(
        key="h100-80gb",
        name="NVIDIA H100 80GB HBM3",
        memory_bytes=81_559 * 2**20,
        memory_bandwidth_bytes_s=3.35e12,
        bf16_dense_flops=989e12,
        fp8_dense_flops=1979e12,
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
            fp8_dense_flops=1979e12,
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
            fp8_dense_flops=None,  # Ampere has no FP8 tensor cores
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
            fp8_dense_flops=733e12,
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


def gpu_by_name(name: str) -> GpuModel | None:
    """The catalog entry whose NVML name is `name` (as exporters label GPUs), or None."""
    return next((gpu for gpu in GPU_CATALOG.values() if gpu.name == name), None)
