"""The hidden GPU that `tests/calibrate/test_hidden_gpu.py` and
`benchmarks/calibrate_hidden_gpu.py` calibrate against, and the server both run it under."""

from __future__ import annotations

from dataclasses import dataclass

from jouletune.calibrate import ServerSettings, SimSetup, Workload
from jouletune.gpu.simulated import gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, builtin_parameters

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVER_FLAGS = ["--max-num-seqs", "256", "--max-model-len", "2048"]
BUILT_IN = builtin_parameters(gpu_model("h100-80gb"), DEFAULT_PERF)
# The hidden GPU: 15-30% off the built-in H100 on bandwidth, compute, host time, idle and
# dynamic power.
HIDDEN = BUILT_IN.model_copy(
    update={
        "weight_bw_efficiency": 0.70,
        "kv_bw_efficiency": 0.65,
        "gemm_efficiency": 0.75,
        "host_per_seq_s": 13e-6,
        "frontend_s": 8e-3,
        "idle_loaded_w": 150.0,
        "active_w": 185.0,
        "tensor_w": 1200.0,
        "dram_w": 190.0,
    }
)


@dataclass(frozen=True)
class HeldOut:
    """A point the calibration never measured, under a power limit or clock lock or neither."""

    concurrency: int
    workload: Workload
    power_limit_w: float | None = None
    sm_clock_lock_mhz: int | None = None

    @property
    def as_found(self) -> bool:
        """True when it changes no GPU setting."""
        return self.power_limit_w is None and self.sm_clock_lock_mhz is None


def h100_server() -> ServerSettings:
    """The engine settings of a sim-server started with SERVER_FLAGS on an H100."""
    return ServerSettings(
        model=MODEL,
        served_model=MODEL,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        max_model_len=2048,
        gpu_memory_utilization=0.92,
    )


def h100_setup() -> SimSetup:
    """The simulator that server runs (the built-in H100; a replay passes its parameters)."""
    return SimSetup(arch=model_arch(MODEL), gpu=gpu_model("h100-80gb"), server=h100_server())
