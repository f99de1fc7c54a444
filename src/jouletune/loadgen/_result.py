"""`BenchResult`: the result of one run; `model_dump()` is the result JSON of docs/contract.md.

Top-level keys are the contract (docs/contract.md) (`config`, `workload`, `completed`, `failed`,
`duration_s`, `window`, `ttft_ms`, `tpot_ms`, `itl_ms`, `e2el_ms`, `request_throughput`,
`output_token_throughput`, `energy_j`, `energy_per_output_token_j`, `energy_per_request_j`,
`avg_power_w`, `gpus`, `avg_batch_size`) plus the fields documented below. A figure that could
not be measured is None (JSON null), never 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jouletune.loadgen._checks import CheckResult
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._diagnosis import Diagnosis, DiagnosisInputs

__all__ = [
    "BenchResult",
    "EnvironmentInfo",
    "GpuResult",
    "LatencySummary",
    "RequestDetail",
    "RunSummary",
    "Spread",
    "WindowResult",
    "WorkloadSummary",
    "inputs_of",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencySummary(_Model):
    """One latency distribution in milliseconds; all None when there were no samples."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None


class WindowResult(_Model):
    """The steady-state window (rule: jouletune.loadgen._window's docstring).

    `start_s`/`end_s` are seconds after the first request was sent; `start_unix_s`/
    `end_unix_s` are the same instants as unix time, for the server's and Prometheus' clocks.
    """

    start_s: float
    end_s: float
    duration_s: float
    start_unix_s: float
    end_unix_s: float
    output_tokens: float = Field(description="tokens whose chunks arrived inside the window")
    completed_requests: int = Field(description="successful requests that ended inside it")
    plateau_in_flight: int = Field(
        description="the in-flight count the start rule waited for (the server's batch for"
        " the server-queue rule)"
    )
    rule: Literal["client", "server-queue"] = Field(
        "client",
        description="which steady-state rule set the window (jouletune.loadgen._window)",
    )


class Spread(_Model):
    """A gauge's readings inside the window; the halves' means show a drift."""

    mean: float
    min: float
    max: float
    first_half_mean: float
    second_half_mean: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        """The spread of the known values, in time order; None when there are none."""
        known = [v for v in values if v is not None]
        if not known:
            return None
        half = max(1, len(known) // 2)
        first, second = known[:half], known[half:] or known[:half]
        return cls(
            mean=sum(known) / len(known), min=min(known), max=max(known),
            first_half_mean=statistics.fmean(first), second_half_mean=statistics.fmean(second),
        )  # fmt: skip

    @property
    def drift(self) -> float:
        """Second half's mean minus the first's."""
        return self.second_half_mean - self.first_half_mean


class GpuResult(_Model):
    """One GPU over the window.

    Attributes:
        exporter_url: the exporter that serves this GPU.
        gpu: the GPU's index label.
        uuid: the GPU's uuid label.
        model_name: the GPU's model, e.g. `NVIDIA H100 80GB HBM3`.
        energy_j: counter difference between the window's edges, joules.
        avg_power_w: energy_j / window duration, watts.
        sampled_power_w: mean of the power gauge over the scrapes inside the window, watts
            (a cross-check; NVML averages power over ~1 s on Hopper).
        power_limit_w: the power limit in the window's last scrape, watts.
        power_cap_bound_fraction: fraction of scrapes inside the window whose power was at
            least `cap_ratio` x the limit; None without limit or power readings.
        scrapes_in_window: scrapes that fell inside the window.
        energy_updates_in_window: scrapes inside the window whose counter value was new
            (the rest repeated a value the exporter had not refreshed).
        sm_clock: the SM clock (Hz) over the scrapes inside the window.
        temperature_c: the GPU temperature (°C) over the scrapes inside the window.
        utilization: mean GPU utilisation (0-1) over the scrapes inside the window.
    """

    exporter_url: str
    gpu: str
    uuid: str
    model_name: str
    energy_j: float
    avg_power_w: float
    sampled_power_w: float | None
    power_limit_w: float | None
    power_cap_bound_fraction: float | None
    scrapes_in_window: int
    energy_updates_in_window: int | None = None
    sm_clock: Spread | None = None
    temperature_c: Spread | None = None
    utilization: float | None = None


class WorkloadSummary(_Model):
    """What was sent."""

    dataset: str
    tokenizer: str | None = Field(
        None, description="what counted the prompts' tokens (`words`: the sim's)"
    )
    num_prompts: int
    sent: int = Field(description="requests actually sent (fewer with --duration or a lost server)")
    warmup_requests: int
    mean_prompt_tokens: float | None = Field(
        description="usage.prompt_tokens: what the server counted, successful requests"
    )
    mean_requested_prompt_tokens: float | None = Field(
        None, description="what those requests asked for (special tokens included)"
    )
    prompt_tokens_deviation: float | None = Field(
        None,
        description="mean counted / mean requested - 1; beyond 1% the run warns: the server's"
        " tokenizer is not the one the prompts were built with",
    )
    mean_max_tokens: float
    request_rate: float | str
    burstiness: float
    max_concurrency: int | None
    seed: int


class RunSummary(_Model):
    """The whole run, ramp-up and drain included: the scope of `vllm bench serve`'s figures,
    to compare with it (the top-level latencies are the steady-state cohort's)."""

    output_tokens: int
    input_tokens: int
    request_throughput: float | None
    output_token_throughput: float | None
    ttft_ms: LatencySummary | None = None
    tpot_ms: LatencySummary | None = None


class RequestDetail(_Model):
    """One measured request (`--save-detailed`); times are unix seconds, latencies ms."""

    index: int
    request_id: str | None
    success: bool
    error: str | None
    send_unix_s: float
    first_token_unix_s: float | None
    end_unix_s: float
    in_window: bool = Field(description="ended inside the window")
    cohort: bool = Field(description="sent after the plateau moment (steady-state cohort)")
    prompt_tokens: int | None
    output_tokens: int | None
    ttft_ms: float | None
    e2el_ms: float | None
    itl_ms: list[float] = Field(
        default_factory=list,
        description="the gap before each chunk after the first, ms (vLLM's `itls`): with"
        " every request's, which engine steps its tokens came in",
    )


class EnvironmentInfo(_Model):
    """What the figures were measured on."""

    jouletune_version: str
    python_version: str
    aiohttp_version: str
    platform: str
    client_cpu: str | None = Field(
        default=None,
        description="the CPU model of the machine the bench ran on; where it is also the"
        " serving host (one-host runs), the host's CPU sets vLLM's step launch and API-server"
        " time, which differ up to 2x between hosts with the same GPU (docs/validation.md)",
    )
    client_cpu_count: int | None = Field(
        default=None, description="the logical CPUs the bench process could run on"
    )
    server_model: str
    server_model_root: str | None
    server_version: str | None
    gpu_models: list[str] = Field(description="the exporters' `model_name` labels")
    gpu_driver_version: str | None = Field(
        description="the driver the energy source's labels name (`simulated` for a sim's"
        " GPUs); None when it names none"
    )


class BenchResult(_Model):
    """The result of one `jouletune bench` run.

    Besides the contract's keys: `latency_scope` (`window`: the latency statistics cover the
    steady-state cohort, requests sent after the plateau moment that ended inside the window;
    `all`: every successful request, used when there is no window), `latency_requests` (how
    many requests the statistics cover), `tokens_per_chunk` (above 1: the server merged tokens,
    so ITL spans several), `window_output_tokens`, `power_cap_bound_fraction`
    (fraction of exporter scrapes in the window at >= `cap_bound_ratio` x the power limit),
    `avg_batch_size_source` (`server`: vLLM's `num_requests_running` gauge; `client`: the
    client's in-flight count), `avg_waiting_requests` (the engine's queue) and `avg_in_flight`
    (the client's requests out: more than the engine ran and queued means the API server held
    the rest),
    `idle_power_w` (total GPU power just before the run), `valid`/`invalid_reason`, `partial`
    (the server was lost mid-run), `errors` (up to 10 distinct request errors), `warnings`,
    `requests` (per-request detail with `save_detailed`).
    """

    config: BenchConfig
    workload: WorkloadSummary
    completed: int
    failed: int
    duration_s: float
    window: WindowResult | None
    latency_scope: Literal["window", "all"]
    latency_requests: int | None = None  # None in results written before it was recorded
    ttft_ms: LatencySummary
    tpot_ms: LatencySummary
    itl_ms: LatencySummary
    e2el_ms: LatencySummary
    tokens_per_chunk: float | None = Field(
        None,
        description="output tokens per streamed chunk of the requests that ended in the window:"
        " more than 1 when the server merged tokens, so ITL spans several (None in older results)",
    )
    request_throughput: float | None
    output_token_throughput: float | None
    window_output_tokens: float | None
    energy_j: float | None
    energy_per_output_token_j: float | None
    energy_per_request_j: float | None
    avg_power_w: float | None
    power_cap_bound_fraction: float | None
    gpus: list[GpuResult]
    avg_batch_size: float | None
    avg_batch_size_source: Literal["server", "client"] | None
    avg_waiting_requests: float | None = Field(
        None, description="mean of vLLM's num_requests_waiting over the window (the engine's queue)"
    )
    avg_in_flight: float | None = Field(
        None, description="the client's mean requests in flight over the window"
    )
    idle_power_w: float | None
    run: RunSummary
    environment: EnvironmentInfo
    idle_energy_j: float | None = Field(
        None, description="energy in the window while no request was in flight"
    )
    diagnosis: Diagnosis | None = Field(
        None, description="why the run cost what it cost (jouletune.loadgen._diagnosis)"
    )
    checks: list[CheckResult] = Field(
        default_factory=list, description="every validity check: threshold, measured, verdict"
    )
    valid: bool
    invalid_reason: str | None
    partial: bool
    errors: list[str]
    warnings: list[str]
    requests: list[RequestDetail] | None = Field(
        None, description="per-request detail, with `save_detailed` (--save-detailed)"
    )


def inputs_of(result: BenchResult) -> DiagnosisInputs:
    """What the diagnosis reads from a bench result."""
    gpus = result.gpus
    utils = [g.utilization for g in gpus if g.utilization is not None]
    clocks = [g.sm_clock.mean for g in gpus if g.sm_clock is not None]
    names = [g.model_name for g in gpus] or result.environment.gpu_models
    return DiagnosisInputs(
        j_per_output_token=result.energy_per_output_token_j,
        energy_j=result.energy_j,
        idle_energy_j=result.idle_energy_j,
        window_s=result.window.duration_s if result.window else None,
        window_completed=result.window.completed_requests if result.window else None,
        batch=result.avg_batch_size,
        max_num_seqs=result.config.server_max_num_seqs,
        client_concurrency=result.config.max_concurrency,
        mean_prompt_tokens=result.workload.mean_prompt_tokens,
        mean_output_tokens=result.workload.mean_max_tokens or None,
        gpu_name=names[0] if names else None,
        num_gpus=max(1, len(gpus)),
        utilization=sum(utils) / len(utils) if utils else None,
        sm_clock_hz=sum(clocks) / len(clocks) if clocks else None,
        cap_bound_fraction=result.power_cap_bound_fraction,
        power_limit_w=next((g.power_limit_w for g in gpus if g.power_limit_w), None),
        waiting=result.avg_waiting_requests,
        in_flight=result.avg_in_flight,
    )
