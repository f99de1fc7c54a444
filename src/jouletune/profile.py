"""GPU profiles: the simulated GPU's parameters fitted to one real GPU (`jouletune calibrate`).

A profile is a JSON file (`GpuProfile`, pydantic) that `jouletune sim-server --gpu-profile`
and `jouletune tune --gpu-profile` read in place of the built-in constants. It says where
every value came from (`sources`: fitted, measured or built-in), whether power limits or SM
clock locks were ever measured on the GPU (a read-only calibration measures neither, so every
cap or clock saving the simulator then shows is still a prediction), what was measured
(`points`, each with the calibrated simulator's replay of it and the residuals), and the
provenance (GPU, driver, engine, model, workloads, date).

This module is a leaf, like `contract` and `engine`: it imports nothing from jouletune, so
the simulator (which applies a profile, `jouletune.sim.apply_profile`), the calibration
(which writes one) and the tuner (which checks one before starting sim-servers) can all read
it. The parameter names are those of `jouletune.sim.PerfConstants` and the simulated GPU's
power model (`jouletune.gpu.simulated`); docs/simulator.md explains each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "PROFILE_KIND",
    "FitSummary",
    "GpuProfile",
    "ParameterSource",
    "ProfileFigures",
    "ProfileParameters",
    "ProfilePoint",
    "Provenance",
    "load_profile",
]

PROFILE_KIND = "jouletune-gpu-profile"

ParameterSource = Literal["fitted", "measured", "built-in"]
"""`fitted`: chosen by the least-squares fit; `measured`: read directly off the measurements
(idle power); `built-in`: the simulator's own value, which the measurements could not pin."""

_Positive = Annotated[float, Field(gt=0)]
_NonNegative = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileParameters(_Model):
    """Every parameter of the simulated GPU a profile sets (units in the names).

    The first eight are the engine-on-GPU constants (`PerfConstants`), the last five the
    power model's (`GpuModel.idle_w`, `idle_loaded_w`, `PowerCoefficients`).
    """

    weight_bw_efficiency: _Positive
    kv_bw_efficiency: _Positive
    gemm_efficiency: _Positive
    attention_efficiency: _Positive
    host_step_s: _NonNegative
    host_per_seq_s: _NonNegative
    frontend_s: _NonNegative
    activation_reserve_bytes: _NonNegative
    idle_w: _NonNegative
    idle_loaded_w: _NonNegative
    active_w: _NonNegative
    tensor_w: _NonNegative
    dram_w: _NonNegative


class ProfileFigures(_Model):
    """The figures of one measured point that the fit compares (None: not measured).

    Attributes:
        j_per_output_token: energy in the window / output tokens in it, joules.
        itl_ms_p50: median inter-token latency, ms.
        itl_ms_p99: 99th-percentile inter-token latency, ms.
        ttft_ms_p50: median time to first token, ms.
        avg_power_w: average power per GPU over the window, watts.
        sm_clock_mhz: mean SM clock over the window, MHz.
        avg_batch_size: time-weighted requests running, over the window.
        output_tok_s: output tokens per second over the window.
    """

    j_per_output_token: float | None
    itl_ms_p50: float | None
    itl_ms_p99: float | None
    ttft_ms_p50: float | None
    avg_power_w: float | None
    sm_clock_mhz: float | None
    avg_batch_size: float | None
    output_tok_s: float | None


class ProfilePoint(_Model):
    """One measured point: what ran, what was measured, what the calibrated simulator gives.

    `predicted` is the calibrated simulator's replay of the same run (a prediction, never a
    measurement); `errors` is predicted / measured - 1 per figure the fit compared.
    """

    name: str
    concurrency: int
    input_len: int
    output_len: int
    power_limit_w: float | None = Field(description="the limit in force in the window, W")
    sm_clock_lock_mhz: float | None = Field(None, description="a clock lock (not yet measured)")
    result_file: str = Field(description="the bench result JSON, relative to the profile")
    used_in_fit: bool
    excluded_reason: str | None = None
    measured: ProfileFigures
    predicted: ProfileFigures | None
    errors: dict[str, float] = Field(default_factory=dict)


class FitSummary(_Model):
    """How the fit went.

    Attributes:
        method: the solver and its settings, one line.
        iterations: solver iterations.
        evaluations: simulator replays of the whole plan.
        converged: the last step changed no parameter by more than the tolerance.
        cost_built_in: weighted sum of squared log-errors with the built-in parameters.
        cost_fitted: the same with the fitted parameters.
        weights: the weight of each figure's squared log-error.
        rms_error_built_in: per figure, root-mean-square relative error over the fitted
            points with the built-in parameters.
        rms_error_fitted: the same with the fitted parameters.
        relative_std: per fitted parameter, its standard error from the fit's Jacobian,
            relative to its value (large: the measurements hardly pin it).
    """

    method: str
    iterations: int
    evaluations: int
    converged: bool
    cost_built_in: float
    cost_fitted: float
    weights: dict[str, float]
    rms_error_built_in: dict[str, float]
    rms_error_fitted: dict[str, float]
    relative_std: dict[str, float]


class Provenance(_Model):
    """Where the measurements come from."""

    created: str = Field(description="ISO 8601 date and time (UTC) the profile was written")
    jouletune_version: str
    gpu_name: str = Field(description="the GPU's name as the exporter labels it")
    gpu_count: int
    driver_version: str | None
    engine_version: str | None = Field(description="the server's /version, e.g. 0.24.0")
    server_model: str = Field(description="the model the server serves")
    sim_model: str = Field(description="the architecture the simulator replayed")
    server_settings: dict[str, float | int | bool] = Field(
        description="the engine settings the replays used (max_num_seqs, ...)"
    )
    workloads: list[str] = Field(description="IN:OUT token lengths of the closed loops")
    base_url: str
    exporter_urls: list[str]
    read_only: bool


class GpuProfile(_Model):
    """A simulated GPU fitted to a real one; the file `jouletune calibrate` writes.

    Attributes:
        kind: always `jouletune-gpu-profile`.
        version: the file format's version.
        gpu: the simulator's catalog key whose datasheet figures (bandwidth, flops, clocks,
            memory, power-limit range) the parameters complete, e.g. `h100-80gb`.
        parameters: every fitted, measured or built-in parameter.
        sources: where each parameter came from.
        power_limits_measured: True when the calibration measured the GPU under power
            limits below its default; False: the power model's response to a cap is the
            built-in one, and a cap's saving is a prediction.
        clock_locks_measured: the same for SM clock locks.
        provenance: what was measured and how; None for a hand-written profile.
        points: every measured point.
        fit: how the fit went; None for a hand-written profile.
    """

    kind: Literal["jouletune-gpu-profile"] = "jouletune-gpu-profile"
    version: Literal[1] = 1
    gpu: str
    parameters: ProfileParameters
    sources: dict[str, ParameterSource]
    power_limits_measured: bool
    clock_locks_measured: bool = False
    provenance: Provenance | None = None
    points: list[ProfilePoint] = Field(default_factory=list)
    fit: FitSummary | None = None

    def fitted(self) -> list[str]:
        """Names of the parameters the fit chose."""
        return [name for name, source in self.sources.items() if source == "fitted"]

    def write(self, path: Path) -> None:
        """Write the profile as indented JSON."""
        path.write_text(self.model_dump_json(indent=2) + "\n")


def load_profile(path: Path) -> GpuProfile:
    """Read a profile; raises ValueError with a one-line message naming the file."""
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read the GPU profile: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a GPU profile: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
        raise ValueError(f'{path}: not a GPU profile (no "kind": "{PROFILE_KIND}")')
    try:
        return GpuProfile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{path}: bad GPU profile: {where}: {first['msg']}") from None
