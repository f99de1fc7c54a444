"""jouletune.loadgen: the load generator behind `jouletune bench`.

    result = await run_bench(BenchConfig(base_url="http://127.0.0.1:8000", max_concurrency=64,
                                         exporter_urls=["http://127.0.0.1:9400"]))
    result.model_dump()  # the result JSON of docs/contract.md

A streaming OpenAI-compatible client (aiohttp) with vLLM's workloads, arrival process and
latency definitions; a steady-state window without ramp-up and drain; energy from a GPU
energy counter (jouletune's exporter, dcgm-exporter or Kepler, scraped live or read back from
Prometheus) interpolated at the window's edges; and validity checks on every measurement.
`compute_metrics` and `steady_state_window` are the pure functions behind the figures.
"""

from jouletune.loadgen._checks import CheckResult, ValidityThresholds
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._dataset import DatasetError, SampleRequest, load_requests
from jouletune.loadgen._diagnosis import Diagnosis, diagnose
from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._metrics import BenchMetrics, LatencyStats, compute_metrics
from jouletune.loadgen._records import RequestRecord, Window
from jouletune.loadgen._result import (
    BenchResult,
    EnvironmentInfo,
    GpuResult,
    LatencySummary,
    RequestDetail,
    RunSummary,
    Spread,
    WindowResult,
    WorkloadSummary,
    inputs_of,
)
from jouletune.loadgen._runner import ProgressCallback, run_bench
from jouletune.loadgen._sources import EnergySource
from jouletune.loadgen._window import NoSteadyStateError, steady_state_window

__all__ = [
    "BenchConfig",
    "BenchError",
    "BenchMetrics",
    "BenchResult",
    "CheckResult",
    "DatasetError",
    "Diagnosis",
    "EnergySource",
    "EnvironmentInfo",
    "GpuResult",
    "LatencyStats",
    "LatencySummary",
    "NoSteadyStateError",
    "ProgressCallback",
    "RequestDetail",
    "RequestRecord",
    "RunSummary",
    "SampleRequest",
    "Spread",
    "ValidityThresholds",
    "Window",
    "WindowResult",
    "WorkloadSummary",
    "compute_metrics",
    "diagnose",
    "inputs_of",
    "load_requests",
    "run_bench",
    "steady_state_window",
]
