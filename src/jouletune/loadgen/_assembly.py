"""Turning one measured run into its `BenchResult`: window, metrics, energy, every section.

Pure functions of what `run_bench` collected (the request records, the exporters' and the
server's scrapes), beside the result type they build (`_result.py`).
"""

from __future__ import annotations

import itertools
import os
import platform
from dataclasses import dataclass

import aiohttp

from jouletune import __version__
from jouletune.loadgen._checks import CheckResult, Evidence, failed, run_checks
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._diagnosis import diagnose
from jouletune.loadgen._metrics import BenchMetrics, LatencyStats, compute_metrics
from jouletune.loadgen._records import RequestRecord, Window
from jouletune.loadgen._result import (
    BenchResult,
    EnvironmentInfo,
    LatencySummary,
    RequestDetail,
    RunSummary,
    WindowResult,
    WorkloadSummary,
    inputs_of,
)
from jouletune.loadgen._server import ServerInfo
from jouletune.loadgen._telemetry import (
    EnergyMeasurement,
    ExporterScrape,
    ServerScrape,
    avg_running,
    avg_waiting,
    energy_during,
    measure_energy,
)
from jouletune.loadgen._window import NoSteadyStateError, steady_state_window
from jouletune.models import ModelArch

__all__ = ["MeasuredRun", "Telemetry", "build_result"]

_MAX_ERRORS_KEPT = 10


@dataclass(frozen=True, kw_only=True, slots=True)
class MeasuredRun:
    """What the measured phase of `run_bench` produced."""

    records: list[RequestRecord]
    t0_s: float  # perf_counter when the first arrival was due
    unix_offset_s: float  # time.time() - perf_counter() during the run
    lost: str | None  # why the server is considered gone, when it is
    requested_prompt_tokens: dict[int, int]  # request index -> the prompt tokens it asked for
    tokenizer: str  # what counted them


@dataclass(frozen=True, kw_only=True, slots=True)
class Telemetry:
    """What was read beside the requests: the energy source's scrapes (live, or read back
    from Prometheus), the server's gauges, and the driver version the source's labels gave."""

    energy: list[ExporterScrape]
    server: list[ServerScrape]
    driver_version: str | None
    model: tuple[str, ModelArch] | None = None  # the served model's shape, when known


def build_result(
    config: BenchConfig,
    server: ServerInfo,
    run: MeasuredRun,
    telemetry: Telemetry,
    idle_power_w: float | None,
    warnings: list[str],
) -> BenchResult:
    """The result of a run: its window, metrics, energy and validity checks, invalid with the
    reasons why."""
    reasons: list[str] = []
    window: Window | None = None
    try:
        window = steady_state_window(
            run.records,
            max_concurrency=config.max_concurrency,
            closed_loop=config.closed_loop,
            server_scrapes=telemetry.server,
        )
    except NoSteadyStateError as err:
        reasons.append(str(err))
    metrics = compute_metrics(run.records, window)
    energy = _energy(config, telemetry, window)
    if energy is not None and energy.problem:
        reasons.append(energy.problem)
    if run.lost:
        reasons.insert(0, f"server lost mid-run: {run.lost}")
    if metrics.completed == 0:
        reasons.append("no request succeeded")
    workload = _workload_summary(config, run)
    checks = run_checks(_evidence(config, metrics, window, energy, workload, run), config.validity)
    reasons += failed(checks)
    parts = _Parts(metrics=metrics, window=window, energy=energy, workload=workload, checks=checks)
    # First: pod results and status rows keep only the first few warnings.
    warnings = merged_tokens_warning(metrics) + warnings
    result = _assemble(config, server, run, parts, telemetry, idle_power_w, reasons, warnings)
    name, arch = telemetry.model or (server.model, None)
    diagnosis = diagnose(inputs_of(result), model=arch, model_name=name)
    return result.model_copy(update={"diagnosis": diagnosis})


# vLLM merges the tokens a stream's coroutine has not yet written into one chunk; a few percent
# is normal (1.000-1.051 in the 43 committed real runs with detail: tokens_per_chunk.py).
MERGED_TOKENS_RATIO = 1.1


def merged_tokens_warning(metrics: BenchMetrics) -> list[str]:
    """A warning when the server streamed noticeably more than one token per chunk."""
    ratio, itl, tpot = metrics.tokens_per_chunk, metrics.itl_ms.mean, metrics.tpot_ms.mean
    if ratio is None or ratio <= MERGED_TOKENS_RATIO or itl is None or tpot is None:
        return []
    return [
        f"the server streamed {ratio:.2f} tokens per chunk, so an ITL spans several tokens: "
        f"ITL {itl:.1f} ms mean against TPOT {tpot:.1f} ms, the per-token figure (vLLM merges "
        "tokens when its API server falls behind the engine, which --api-server-count eases, "
        "and streams several per step with speculative decoding)"
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Parts:
    metrics: BenchMetrics
    window: Window | None
    energy: EnergyMeasurement | None
    workload: WorkloadSummary
    checks: list[CheckResult]


def _energy(
    config: BenchConfig, telemetry: Telemetry, window: Window | None
) -> EnergyMeasurement | None:
    if not config.measures_energy or window is None:
        return None
    return measure_energy(telemetry.energy, window, cap_ratio=config.cap_bound_ratio)


def _evidence(
    config: BenchConfig,
    metrics: BenchMetrics,
    window: Window | None,
    energy: EnergyMeasurement | None,
    workload: WorkloadSummary,
    run: MeasuredRun,
) -> Evidence:
    gpus = energy.gpus if energy else ()
    clocks = [g.sm_clock for g in gpus if g.sm_clock is not None and g.sm_clock.first_half_mean]
    temps = [g.temperature_c for g in gpus if g.temperature_c is not None]
    sent = len(run.records)
    return Evidence(
        window_s=window.duration_s if window else None,
        window_output_tokens=metrics.window_output_tokens,
        energy_samples=min((g.energy_updates_in_window or 0 for g in gpus), default=None),
        counter_decreases=energy.counter_decreases if energy else None,
        sm_clock_drift=max((abs(c.drift) / c.first_half_mean for c in clocks), default=None),
        temperature_drift_c=max((abs(t.drift) for t in temps), default=None),
        error_rate=metrics.failed / sent if sent else None,
        # A chat template adds tokens the client cannot count: no comparison there.
        prompt_tokens_deviation=None if config.chat else workload.prompt_tokens_deviation,
    )


def _assemble(
    config: BenchConfig,
    server: ServerInfo,
    run: MeasuredRun,
    parts: _Parts,
    telemetry: Telemetry,
    idle_power_w: float | None,
    reasons: list[str],
    warnings: list[str],
) -> BenchResult:
    metrics, window, energy, workload = parts.metrics, parts.window, parts.energy, parts.workload
    energy_j = energy.energy_j if energy else None
    tokens = metrics.window_output_tokens
    batch = avg_running(telemetry.server, window) if window else None
    batch_source = "server" if batch is not None else ("client" if window else None)
    return BenchResult(
        config=config,
        workload=workload,
        completed=metrics.completed,
        failed=metrics.failed,
        duration_s=metrics.run_duration_s,
        window=_window_result(window, run, metrics),
        latency_scope=metrics.latency_scope,
        latency_requests=metrics.latency_requests,
        ttft_ms=_latency(metrics.ttft_ms),
        tpot_ms=_latency(metrics.tpot_ms),
        itl_ms=_latency(metrics.itl_ms),
        e2el_ms=_latency(metrics.e2el_ms),
        tokens_per_chunk=metrics.tokens_per_chunk,
        request_throughput=metrics.request_throughput,
        output_token_throughput=metrics.output_token_throughput,
        window_output_tokens=tokens,
        energy_j=energy_j,
        energy_per_output_token_j=energy_j / tokens if energy_j is not None and tokens else None,
        energy_per_request_j=(
            energy_j / metrics.window_completed
            if energy_j is not None and metrics.window_completed
            else None
        ),
        avg_power_w=energy.avg_power_w if energy else None,
        idle_energy_j=_idle_energy(run.records, window, telemetry) if energy_j else None,
        power_cap_bound_fraction=energy.cap_bound_fraction if energy else None,
        gpus=list(energy.gpus) if energy else [],
        avg_batch_size=batch if batch is not None else metrics.avg_in_flight,
        avg_batch_size_source=batch_source,
        avg_waiting_requests=avg_waiting(telemetry.server, window) if window else None,
        avg_in_flight=metrics.avg_in_flight,
        idle_power_w=idle_power_w,
        run=RunSummary(
            output_tokens=metrics.run_output_tokens,
            input_tokens=metrics.total_input_tokens,
            request_throughput=metrics.run_request_throughput,
            output_token_throughput=metrics.run_output_token_throughput,
            ttft_ms=_latency(metrics.run_ttft_ms),
            tpot_ms=_latency(metrics.run_tpot_ms),
        ),
        environment=_environment(server, telemetry),
        checks=parts.checks,
        valid=not reasons,
        invalid_reason="; ".join(reasons) or None,
        partial=run.lost is not None,
        errors=_errors(run.records),
        warnings=warnings,
        requests=_details(run, window) if config.save_detailed else None,
    )


def _idle_energy(
    records: list[RequestRecord], window: Window | None, telemetry: Telemetry
) -> float | None:
    """Energy in the window while no request was in flight (the client's count)."""
    if window is None:
        return None
    spans: list[tuple[float, float]] = []
    in_flight, idle_from = 0, window.start_s
    events = sorted([(r.send_s, 1) for r in records] + [(r.end_s, -1) for r in records])
    for t_s, delta in events:
        if in_flight == 0 and delta > 0 and t_s > idle_from:
            spans.append((max(idle_from, window.start_s), min(t_s, window.end_s)))
        in_flight += delta
        if in_flight == 0:
            idle_from = t_s
    if in_flight == 0 and idle_from < window.end_s:
        spans.append((max(idle_from, window.start_s), window.end_s))
    spans = [(a, b) for a, b in spans if b > a]
    return energy_during(telemetry.energy, spans) if spans else 0.0


def _latency(stats: LatencyStats) -> LatencySummary:
    return LatencySummary(mean=stats.mean, p50=stats.p50, p90=stats.p90, p99=stats.p99)


def _window_result(
    window: Window | None, run: MeasuredRun, metrics: BenchMetrics
) -> WindowResult | None:
    if window is None:
        return None
    return WindowResult(
        start_s=window.start_s - run.t0_s,
        end_s=window.end_s - run.t0_s,
        duration_s=window.duration_s,
        start_unix_s=window.start_s + run.unix_offset_s,
        end_unix_s=window.end_s + run.unix_offset_s,
        output_tokens=metrics.window_output_tokens or 0.0,
        completed_requests=metrics.window_completed or 0,
        plateau_in_flight=window.plateau_in_flight,
        rule=window.rule,
    )


def _workload_summary(config: BenchConfig, run: MeasuredRun) -> WorkloadSummary:
    records = run.records
    counted = [r for r in records if r.success and r.prompt_tokens is not None]
    max_tokens = [r.expected_output_len for r in records]
    mean_counted = _mean([r.prompt_tokens for r in counted if r.prompt_tokens is not None])
    mean_asked = _mean([run.requested_prompt_tokens[r.index] for r in counted])
    return WorkloadSummary(
        dataset=config.dataset_name,
        tokenizer=run.tokenizer,
        num_prompts=config.num_prompts,
        sent=len(records),
        warmup_requests=config.warmup_requests,
        mean_prompt_tokens=mean_counted,
        mean_requested_prompt_tokens=mean_asked,
        prompt_tokens_deviation=(
            None if mean_counted is None or not mean_asked else mean_counted / mean_asked - 1.0
        ),
        mean_max_tokens=sum(max_tokens) / len(max_tokens) if max_tokens else 0.0,
        request_rate="inf" if config.closed_loop else config.request_rate,
        burstiness=config.burstiness,
        max_concurrency=config.max_concurrency,
        seed=config.seed,
    )


def _environment(server: ServerInfo, telemetry: Telemetry) -> EnvironmentInfo:
    return EnvironmentInfo(
        jouletune_version=__version__,
        python_version=platform.python_version(),
        aiohttp_version=aiohttp.__version__,
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        client_cpu=_cpu_model(),
        client_cpu_count=_usable_cpus(),
        server_model=server.model,
        server_model_root=server.model_root,
        server_version=server.version,
        gpu_models=sorted({g.model_name for s in telemetry.energy for g in s.gpus if g.model_name}),
        gpu_driver_version=telemetry.driver_version,
    )


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (x86 Linux), else what `platform` knows (on
    ARM Linux, which names no model there, only the architecture), else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def _usable_cpus() -> int | None:
    """The CPUs this process may run on (a container's share, where the OS says), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _details(run: MeasuredRun, window: Window | None) -> list[RequestDetail]:
    off_s = run.unix_offset_s
    return [
        RequestDetail(
            index=r.index,
            request_id=r.request_id,
            success=r.success,
            error=r.error,
            send_unix_s=r.send_s + off_s,
            first_token_unix_s=None if r.first_token_s is None else r.first_token_s + off_s,
            end_unix_s=r.end_s + off_s,
            in_window=window is not None and r.success and window.start_s < r.end_s <= window.end_s,
            cohort=window is not None and r.send_s > window.plateau_s,
            prompt_tokens=r.prompt_tokens,
            output_tokens=r.output_tokens,
            ttft_ms=None if r.ttft_s is None else r.ttft_s * 1000,
            e2el_ms=None if r.e2el_s is None else r.e2el_s * 1000,
            itl_ms=[round((b - a) * 1000, 3) for a, b in itertools.pairwise(r.chunk_times_s)],
        )
        for r in sorted(run.records, key=lambda r: r.index)
    ]


def _errors(records: list[RequestRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        if r.error is not None and len(seen) < _MAX_ERRORS_KEPT:
            seen.setdefault(r.error, None)
    return list(seen)


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None
