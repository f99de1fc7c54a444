"""`Provenance`: whether a trial's figures were measured or predicted by the simulator.

It is read from what the bench result carries, never from the spec's `backend`: CI and the
operator's tests put `jouletune sim-server` where `vllm serve` would run (`JOULETUNE_VLLM_CMD`),
and a spec cannot tell. Two things give a simulator away:

- the GPU driver the energy source names: a jouletune exporter (or its dcgm format) serving a
  sim-server's GPUs says `simulated`;
- the engine's `/version`: a sim-server answers `jouletune-sim X.Y (vLLM 0.24 API)`.

Either one makes the figures a prediction: a real engine on simulated GPUs, or simulated
timing on a real GPU, is not a measurement of anything a user would run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.gpu.simulated import GPU_CATALOG

if TYPE_CHECKING:
    from jouletune.loadgen import EnvironmentInfo

__all__ = [
    "CAP_EVIDENCE",
    "PREDICTED_API_SERVER_CAVEAT",
    "PREDICTED_CAP_CAVEAT",
    "PREDICTED_CLOCK_CAVEAT",
    "PREDICTED_ITL_CAVEAT",
    "PREDICTED_TTFT_CAVEAT",
    "SIMULATED_DRIVER",
    "Provenance",
    "ProvenanceKind",
    "SimProfile",
    "common_provenance",
    "setting_caveat",
]

ProvenanceKind = Literal["measured", "predicted"]
# The driver version a jouletune exporter names for a sim-server's GPUs
# (jouletune.exporter.cli._driver_version).
SIMULATED_DRIVER = "simulated"
SIM_ENGINE = "jouletune-sim"
# What a sim-server's /version says (jouletune.sim._server): `jouletune-sim 0.1.0 (...)`.
_SIM_VERSION = re.compile(rf"^{SIM_ENGINE}\s+(\S+)")
# The engine jouletune serves with (jouletune.engine); its /version answers a bare version.
_ENGINE = "vLLM"
_GPU_KEY_OF_NAME = {model.name: key for key, model in GPU_CATALOG.items()}

# The published evidence beside a simulated power-cap saving. The simulator's power model is
# fitted to uncapped H100 runs; what a cap costs on a real GPU is not in that fit.
CAP_EVIDENCE = (
    "MLPerf Inference v4.1 (H200, TensorRT-LLM): a 500 W limit cut Llama-2-70B throughput "
    "to 0.79-0.81 of its 700 W figure, and 350 W cut GPT-J to 0.61-0.65.",
    'arXiv 2605.11999, "The Illusion of Power Capping in LLM Decode": low-batch H200 decode '
    "drew far below the limit, so caps never bound, while locking SM clocks saved up to 32% "
    "of decode energy.",
)
PREDICTED_CAP_CAVEAT = (
    "The power-cap saving is the simulator's prediction, not a measurement: its power model is "
    "fitted to uncapped H100 runs and no calibrated profile of this GPU under a cap was used. "
    "Published H200 results differ: caps cut throughput to 0.61-0.81 of 700 W (MLPerf "
    "Inference v4.1), or never bound in low-batch decode (arXiv 2605.11999). Measure the cap "
    "on the GPU (`jouletune tune --backend local`) before adopting it."
)
# The same for an SM clock lock: the model's saving rests on dynamic power going as the cube of
# the clock and on memory-bound kernels not slowing down as it drops, neither of which was
# measured under a lock.
PREDICTED_CLOCK_CAVEAT = (
    "The SM-clock-lock saving is the simulator's prediction, not a measurement: its power model "
    "(clocked logic drawing power as the cube of the clock, memory-bound kernels as fast at "
    "any clock) is fitted to H100 runs at full clock, and no calibrated profile of this GPU "
    "under a clock lock was used. The one published measurement, arXiv 2605.11999 on H200 "
    "decode, saw locking SM clocks save up to 32% of decode energy. Measure the lock on the "
    "GPU (`jouletune tune --backend local`) before adopting it."
)


class SimProfile(BaseModel):
    """The GPU profile (`jouletune calibrate`) a tune on the simulator ran with: whether it
    was fitted under caps and clock locks decides how a saving from one is described.

    Attributes:
        path: the profile file.
        gpu_name: the GPU it was calibrated on, as its exporter named it.
        created: when it was written (ISO 8601).
        power_limits_measured: its calibration measured the GPU under power limits.
        clock_locks_measured: its calibration measured the GPU under SM clock locks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    gpu_name: str
    created: str
    power_limits_measured: bool
    clock_locks_measured: bool


def setting_caveat(profile: SimProfile | None, *, setting: Literal["cap", "lock"]) -> str:
    """The caveat of a cap or lock saving the simulator predicted: with a profile calibrated
    under that setting, a prediction still, fitted to the GPU under such settings; without
    one, an uncalibrated prediction with the published evidence."""
    measured = profile is not None and (
        profile.power_limits_measured if setting == "cap" else profile.clock_locks_measured
    )
    if profile is None or not measured:
        return PREDICTED_CAP_CAVEAT if setting == "cap" else PREDICTED_CLOCK_CAVEAT
    what = "power-cap" if setting == "cap" else "SM-clock-lock"
    under = "power limits" if setting == "cap" else "SM clock locks"
    return (
        f"The {what} saving is the simulator's prediction, not a measurement, with the GPU "
        f"profile {profile.path} ({profile.gpu_name}, {profile.created}), whose calibration "
        f"measured this GPU under {under}: its power model is fitted to them, not measured at "
        "this configuration. Measure it on the GPU (`jouletune tune --backend local`) before "
        "adopting it."
    )


# TTFT is the simulator's weakest figure (docs/validation.md): how a closed loop's returning
# requests reach the scheduler decides it, and at fixed lengths real vLLM itself reads it far
# apart run to run.
PREDICTED_TTFT_CAVEAT = (
    "The TTFT figures are the simulator's predictions, its least accurate: against 49 real "
    "H100 vLLM points its TTFT p50 is within 25% at 39. Where request lengths vary it misses "
    "at three points of eight (39% low at 128 streams; 36% and 30% low at 512, where vLLM's "
    "API server held requests back); where every request has the same lengths it "
    "misses from 45% low to 45% high, and one real run does not pin TTFT down there: six runs "
    "of 1024-token prompts at 256 streams read 625 to 2641 ms, and one stream's TTFT is the "
    "serving host's launch of its prefill, 18 to 37 ms on hosts of one H100 pool "
    "(docs/validation.md). Measure TTFT on the GPU (`jouletune tune --backend local`) before "
    "relying on a TTFT bound."
)
# ITL p50 is within 10% at every fixed-length point (on the mean of repeated runs) and at four
# of the five gated varied-length points (benchmarks/sim_fidelity.py).
PREDICTED_ITL_CAVEAT = (
    "The ITL figures are the simulator's predictions, for a typical serving host: where "
    "request lengths vary, the median can fall between decode-only gaps and the longer gaps "
    "after a step that prefills, and the host's CPU decides which (real H100 vLLM at 128 "
    "streams of 512/256 +-50% read ITL p50 from 11.5 ms on one machine to 14.3 ms on "
    "another, the simulator 12.1 to 14.2 ms depending on the prompts), while at fixed "
    "lengths it is within 10% of the mean of the runs at every point measured, a single run "
    "off by up to 15% where the median sits between two modes; at 512 streams, where vLLM's "
    "API server is the bottleneck, it misses by 14% to 47% (docs/validation.md). "
    "Measure ITL on the serving host (`jouletune tune --backend local`) before relying on an "
    "ITL bound."
)

PREDICTED_API_SERVER_CAVEAT = (
    "What the API-server count does is the simulator's prediction, and it predicts less than "
    "vLLM did: at 512 streams on a real H100 a second API server filled the batch one server "
    "had held at 302 of 512 and cut J/output-token 14.7%; the simulator's one server held "
    "323 and a second saved 1.8% (docs/validation.md). Search apiServerCount on the serving "
    "host (`jouletune tune --backend local`, or backend vllm) before choosing a count."
)


class Provenance(BaseModel):
    """Where a trial's figures come from.

    Attributes:
        kind: `measured` (a real engine on real GPUs) or `predicted` (jouletune's simulator
            stood in for the engine, the GPUs, or both).
        gpu: the GPU model: NVML's name when measured (`NVIDIA H100 80GB HBM3`), the
            simulator's catalog key when predicted (`h100-80gb`); None when the energy
            source named none.
        driver: the GPU driver version (`simulated` for the simulator's GPUs); None when the
            energy source named none (Kepler).
        engine: `vLLM`, or `jouletune-sim` for the simulated server.
        engine_version: the version the engine's `/version` gave; None when it gave none.
        jouletune_version: the jouletune that measured the figures, or the simulator's own
            version when it predicted them.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    kind: ProvenanceKind
    gpu: str | None = None
    driver: str | None = None
    engine: str = Field(description="vLLM, or jouletune-sim for the simulated server")
    engine_version: str | None = None
    jouletune_version: str

    @classmethod
    def of(cls, environment: EnvironmentInfo) -> Provenance:
        """The provenance of one bench result's figures, from its `environment`."""
        sim = _SIM_VERSION.match(environment.server_version or "")
        driver = environment.gpu_driver_version
        predicted = sim is not None or driver == SIMULATED_DRIVER
        names = environment.gpu_models
        if predicted:
            names = [_GPU_KEY_OF_NAME.get(name, name) for name in names]
        return cls(
            kind="predicted" if predicted else "measured",
            gpu=", ".join(names) or None,
            driver=driver,
            engine=SIM_ENGINE if sim is not None else _ENGINE,
            engine_version=sim.group(1) if sim is not None else environment.server_version,
            jouletune_version=sim.group(1) if sim is not None else environment.jouletune_version,
        )

    @property
    def predicted(self) -> bool:
        """True when the simulator stood in for anything."""
        return self.kind == "predicted"

    def sentence(self) -> str:
        """One line a reader cannot mistake, e.g. `measured on NVIDIA H100 80GB HBM3, driver
        580.159.04, vLLM 0.24.0`."""
        gpu = self.gpu or "an unnamed GPU"
        if self.predicted:
            return (
                f"predicted by jouletune's simulator (jouletune {self.jouletune_version}, "
                f"GPU model {gpu}, not a measurement)"
            )
        driver = f"driver {self.driver}" if self.driver else "driver unknown"
        version = self.engine_version or "(version unknown)"
        return f"measured on {gpu}, {driver}, {self.engine} {version}"


def common_provenance(provenances: Iterable[Provenance | None]) -> Provenance | None:
    """The one provenance of several figures: the first known, a predicted one first, since
    a mean over figures of which any was predicted is itself a prediction."""
    known = [p for p in provenances if p is not None]
    return next((p for p in known if p.predicted), known[0] if known else None)
