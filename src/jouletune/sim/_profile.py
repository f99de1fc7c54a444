"""GPU profiles in the simulator: a profile's parameters in place of the built-in constants.

`jouletune.profile.ProfileParameters` names the engine constants (`PerfConstants`) and the
power model's figures (`GpuModel`, `PowerCoefficients`) a calibration fits; these two
functions map them onto the simulator's types and back, so the sim-server, `tune --backend
sim` and the calibration's own replays all run one model.
"""

from __future__ import annotations

import dataclasses

from jouletune.gpu.simulated import GpuModel, PowerCoefficients
from jouletune.profile import ProfileParameters
from jouletune.sim._perf import PerfConstants

__all__ = ["apply_profile", "builtin_parameters"]

# ProfileParameters' fields that belong to the power model rather than PerfConstants.
_GPU_FIELDS = ("idle_w", "idle_loaded_w")
_POWER_FIELDS = ("active_w", "tensor_w", "dram_w")


def apply_profile(
    gpu: GpuModel, perf: PerfConstants, params: ProfileParameters
) -> tuple[GpuModel, PerfConstants]:
    """`gpu` and `perf` with every value `params` sets (datasheet figures stay `gpu`'s)."""
    values = params.model_dump()
    power = PowerCoefficients(**{name: values.pop(name) for name in _POWER_FIELDS})
    gpu_values = {name: values.pop(name) for name in _GPU_FIELDS}
    return (
        dataclasses.replace(gpu, power=power, **gpu_values),
        dataclasses.replace(perf, **values),
    )


def builtin_parameters(gpu: GpuModel, perf: PerfConstants) -> ProfileParameters:
    """The parameters `gpu` and `perf` run with, as a profile would state them."""
    perf_values = {
        name: getattr(perf, name)
        for name in ProfileParameters.model_fields
        if name not in _GPU_FIELDS + _POWER_FIELDS
    }
    return ProfileParameters(
        **perf_values,
        idle_w=gpu.idle_w,
        idle_loaded_w=gpu.idle_loaded_w,
        active_w=gpu.power.active_w,
        tensor_w=gpu.power.tensor_w,
        dram_w=gpu.power.dram_w,
    )
