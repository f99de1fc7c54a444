"""jouletune.sim: a simulated vLLM server whose timing and GPU power follow a calibrated model.

`jouletune sim-server` (`cli.main`) serves vLLM's OpenAI API, vLLM's own `/metrics` and the
`/sim/*` endpoints (GPUs, power limits, ground truth). The same engine model runs in simulated
time through `run_closed_loop` (the calibration's fixed window) and `ClosedLoopReplay` (a
`jouletune bench` closed loop, replayed request by request), which the calibration and
fidelity benchmarks and fast tests use. `apply_profile` puts a GPU profile's parameters
(`jouletune.profile`, written by `jouletune calibrate`) in place of the built-in ones.
"""

from jouletune.sim._closedloop import (
    ClientRequest,
    ClosedLoopReplay,
    ClosedLoopResult,
    TracedRequest,
    run_closed_loop,
)
from jouletune.sim._engine import Engine, EngineConfig, RequestRecord, SimRequest
from jouletune.sim._kvcache import BLOCK_SIZE, prompt_block_hashes
from jouletune.sim._perf import DEFAULT_PERF, BatchShape, PerfConstants, kv_cache_tokens, step_work
from jouletune.sim._profile import apply_profile, builtin_parameters

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_PERF",
    "BatchShape",
    "ClientRequest",
    "ClosedLoopReplay",
    "ClosedLoopResult",
    "Engine",
    "EngineConfig",
    "PerfConstants",
    "RequestRecord",
    "SimRequest",
    "TracedRequest",
    "apply_profile",
    "builtin_parameters",
    "kv_cache_tokens",
    "prompt_block_hashes",
    "run_closed_loop",
    "step_work",
]
