"""jouletune.sim: a simulated vLLM server whose timing and GPU power follow a calibrated model.

`jouletune sim-server` (`cli.main`) serves vLLM's OpenAI API, vLLM's own `/metrics` and the
`/sim/*` endpoints (GPUs, power limits, ground truth). The same engine model runs in simulated
time through `run_closed_loop`, which the calibration benchmark and fast tests use.
"""

from jouletune.sim._closedloop import ClosedLoopResult, run_closed_loop
from jouletune.sim._engine import Engine, EngineConfig, RequestRecord, SimRequest
from jouletune.sim._models import MODEL_CATALOG, ModelArch, model_arch
from jouletune.sim._perf import DEFAULT_PERF, BatchShape, PerfConstants, kv_cache_tokens, step_work

__all__ = [
    "DEFAULT_PERF",
    "MODEL_CATALOG",
    "BatchShape",
    "ClosedLoopResult",
    "Engine",
    "EngineConfig",
    "ModelArch",
    "PerfConstants",
    "RequestRecord",
    "SimRequest",
    "kv_cache_tokens",
    "model_arch",
    "run_closed_loop",
    "step_work",
]
