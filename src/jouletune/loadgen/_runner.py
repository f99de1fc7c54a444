"""`run_bench`: one measured run, from probing the server to the finished `BenchResult`.

Order: probe server and exporters (fail fast, one-line errors) -> build the workload -> wait
until the server is idle and GPU power has settled -> warm-up requests -> idle again -> poll
exporters and server while the requests run -> steady-state window -> metrics, energy ->
result. Everything measured after the run starts ends up in the result, even when the run
is cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import aiohttp

from jouletune import __version__
from jouletune.loadgen._arrivals import arrival_offsets_s
from jouletune.loadgen._client import (
    build_body,
    request_headers,
    send_time_trace,
    stream_request,
)
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._dataset import DatasetError, SampleRequest, load_requests
from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._metrics import BenchMetrics, LatencyStats, compute_metrics
from jouletune.loadgen._poller import Poller, ScrapeError, scrape_exporter
from jouletune.loadgen._records import RequestRecord, Window
from jouletune.loadgen._result import (
    BenchResult,
    EnvironmentInfo,
    LatencySummary,
    RequestDetail,
    RunSummary,
    WindowResult,
    WorkloadSummary,
)
from jouletune.loadgen._server import (
    ServerInfo,
    is_alive,
    probe_server,
    wait_idle,
    wait_power_settled,
)
from jouletune.loadgen._telemetry import (
    EnergyMeasurement,
    ExporterScrape,
    avg_running,
    measure_energy,
)
from jouletune.loadgen._window import NoSteadyStateError, steady_state_window

__all__ = ["ProgressCallback", "run_bench"]

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(done, total)` each time a measured request ends."""

_MAX_ERRORS_KEPT = 10
_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class _Run:
    """What the measured phase produced."""

    records: list[RequestRecord]
    t0_s: float  # perf_counter when the first arrival was due
    unix_offset_s: float  # time.time() - perf_counter() during the run
    lost: str | None  # why the server is considered gone, when it is


class _ServerWatch:
    """Decides, once, whether a connection failure means the server is gone."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url
        self._lock = asyncio.Lock()
        self.lost: str | None = None

    async def connection_failed(self, error: str) -> None:
        async with self._lock:
            if self.lost is None and not await is_alive(self._session, self._base_url):
                self.lost = error


async def run_bench(
    config: BenchConfig, *, progress: ProgressCallback | None = None
) -> BenchResult:
    """Run one benchmark and return its result (see `BenchResult`).

    Raises:
        BenchError: the run could not start (unreachable server or exporter, bad dataset,
            server never idle). Problems found during the run mark the result instead.
    """
    requests = _workload(config)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=_CONNECT_TIMEOUT_S, sock_read=config.request_timeout_s
    )
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[send_time_trace()]
    ) as session:
        server = await probe_server(session, config.base_url, config.model)
        first_scrapes = await _probe_exporters(session, config.exporter_urls)
        await _get_ready(session, config, server)
        if config.warmup_requests:
            await _warmup(session, config, server, requests)
            await _get_ready(session, config, server)
        idle_power_w, settled = await _settle_power(session, config)
        poller = Poller(
            session=session,
            exporter_urls=config.exporter_urls,
            server_url=config.base_url if server.has_gauges else None,
            exporter_interval_s=config.exporter_poll_interval_s,
            server_interval_s=config.server_poll_interval_s,
        )
        poller.start()
        try:
            run = await _measure(session, config, server, requests, progress)
        finally:
            await poller.stop()
    warnings = _poll_warnings(poller) + ([] if settled else [_unsettled(config)])
    return _result(config, server, run, poller, first_scrapes, idle_power_w, warnings)


def _workload(config: BenchConfig) -> list[SampleRequest]:
    try:
        return load_requests(
            dataset=config.dataset_name,
            num_prompts=config.num_prompts + config.warmup_requests,
            seed=config.seed,
            dataset_path=Path(config.dataset_path) if config.dataset_path else None,
            random_input_len=config.random_input_len,
            random_output_len=config.random_output_len,
            random_range_ratio=config.random_range_ratio,
            sharegpt_output_len=config.sharegpt_output_len,
        )
    except DatasetError as err:
        raise BenchError(str(err)) from None


async def _probe_exporters(session: aiohttp.ClientSession, urls: list[str]) -> list[ExporterScrape]:
    scrapes = []
    for url in urls:
        try:
            scrape = await scrape_exporter(
                session, url, timeout_s=_CONNECT_TIMEOUT_S, versions=True
            )
        except ScrapeError as err:
            raise BenchError(f"exporter unreachable: {err}") from None
        if not scrape.gpus:
            raise BenchError(f"exporter {url} serves no jouletune_gpu_energy_joules_total series")
        scrapes.append(scrape)
    return scrapes


async def _get_ready(
    session: aiohttp.ClientSession, config: BenchConfig, server: ServerInfo
) -> None:
    if server.has_gauges:
        await wait_idle(session, config.base_url, config.idle_timeout_s)


async def _settle_power(
    session: aiohttp.ClientSession, config: BenchConfig
) -> tuple[float | None, bool]:
    if not config.exporter_urls:
        return None, True
    if config.power_settle_timeout_s == 0:
        return None, True
    return await wait_power_settled(session, config.exporter_urls, config.power_settle_timeout_s)


async def _warmup(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    server: ServerInfo,
    requests: list[SampleRequest],
) -> None:
    """Send the warm-up requests (the workload's tail) at the run's concurrency; not measured."""
    warm = requests[config.num_prompts :]
    limit = asyncio.Semaphore(config.max_concurrency or len(warm))
    headers = request_headers()

    async def one(i: int, req: SampleRequest) -> None:
        async with limit:
            body = build_body(
                req, model=server.model, chat=config.chat, ignore_eos=config.ignore_eos
            )
            await stream_request(
                session,
                config.api_url,
                body,
                headers=headers,
                index=i,
                expected_output_len=req.output_len,
            )

    await asyncio.gather(*(one(i, r) for i, r in enumerate(warm)))


async def _measure(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    server: ServerInfo,
    requests: list[SampleRequest],
    progress: ProgressCallback | None,
) -> _Run:
    """Send the measured requests: closed loop as `max_concurrency` streams that each send
    the next request when the last ends; open loop on the precomputed arrival times, queued
    behind the concurrency cap when there is one (vLLM's semaphore)."""
    measured = requests[: config.num_prompts]
    dispatch = _Dispatch(session=session, config=config, server=server, progress=progress)
    unix_offset_s = _unix_offset_s()
    dispatch.start()
    if config.closed_loop:
        await dispatch.closed_loop(measured)
    else:
        await dispatch.open_loop(measured)
    return _Run(
        records=dispatch.records,
        t0_s=dispatch.t0_s,
        unix_offset_s=unix_offset_s,
        lost=dispatch.watch.lost,
    )


class _Dispatch:
    """Sends requests until the workload, the `--duration` or the server runs out."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        config: BenchConfig,
        server: ServerInfo,
        progress: ProgressCallback | None,
    ) -> None:
        self._session = session
        self._config = config
        self._model = server.model
        self._progress = progress
        self._headers = request_headers()
        self.watch = _ServerWatch(session, config.base_url)
        self.records: list[RequestRecord] = []
        self.t0_s = perf_counter()
        self._stop_s = float("inf")

    def start(self) -> None:
        """Start the clock the arrival times and `--duration` count from."""
        self.t0_s = perf_counter()
        if self._config.duration_s is not None:
            self._stop_s = self.t0_s + self._config.duration_s

    def stopped(self) -> bool:
        """True once no new request may be sent."""
        return self.watch.lost is not None or perf_counter() >= self._stop_s

    async def closed_loop(self, measured: list[SampleRequest]) -> None:
        """`max_concurrency` streams (all requests at once without a cap) share the queue."""
        queue = iter(enumerate(measured))
        streams = min(self._config.max_concurrency or len(measured), len(measured))

        async def stream() -> None:
            for i, req in queue:
                if self.stopped():
                    return
                await self._send(i, req)

        await asyncio.gather(*(stream() for _ in range(streams)))

    async def open_loop(self, measured: list[SampleRequest]) -> None:
        """One task per arrival, each waiting for a slot under the cap."""
        cfg = self._config
        offsets_s = arrival_offsets_s(
            len(measured), request_rate=cfg.request_rate, burstiness=cfg.burstiness, seed=cfg.seed
        )
        limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None

        async def arrival(i: int, req: SampleRequest) -> None:
            async with limit if limit is not None else contextlib.nullcontext():
                if not self.stopped():
                    await self._send(i, req)

        tasks = []
        for i, (req, offset_s) in enumerate(zip(measured, offsets_s, strict=True)):
            # sleep(0) when behind schedule still lets the started requests run.
            await asyncio.sleep(max(0.0, self.t0_s + offset_s - perf_counter()))
            if self.stopped():
                break
            tasks.append(asyncio.create_task(arrival(i, req)))
        await asyncio.gather(*tasks)

    async def _send(self, index: int, req: SampleRequest) -> None:
        cfg = self._config
        body = build_body(req, model=self._model, chat=cfg.chat, ignore_eos=cfg.ignore_eos)
        outcome = await stream_request(
            self._session,
            cfg.api_url,
            body,
            headers=self._headers,
            index=index,
            expected_output_len=req.output_len,
        )
        self.records.append(outcome.record)
        if outcome.error_kind == "connection":
            await self.watch.connection_failed(outcome.record.error or "connection failed")
        if self._progress is not None:
            self._progress(len(self.records), cfg.num_prompts)


def _unix_offset_s() -> float:
    """time.time() - perf_counter(), from the tightest of a few back-to-back reads."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        a = perf_counter()
        wall = time.time()
        b = perf_counter()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) / 2)
    assert best is not None, "the loop runs at least once"
    return best[1]


def _poll_warnings(poller: Poller) -> list[str]:
    return [
        f"{count} scrape(s) of {url} failed; last: {last}"
        for url, (count, last) in poller.errors().items()
        if count
    ]


def _unsettled(config: BenchConfig) -> str:
    return f"GPU power did not settle within {config.power_settle_timeout_s:g}s before the run"


def _result(
    config: BenchConfig,
    server: ServerInfo,
    run: _Run,
    poller: Poller,
    first_scrapes: list[ExporterScrape],
    idle_power_w: float | None,
    warnings: list[str],
) -> BenchResult:
    reasons: list[str] = []
    window: Window | None = None
    try:
        window = steady_state_window(
            run.records, max_concurrency=config.max_concurrency, closed_loop=config.closed_loop
        )
    except NoSteadyStateError as err:
        reasons.append(str(err))
    metrics = compute_metrics(run.records, window)
    energy = _energy(config, poller, window)
    if energy is not None and energy.problem:
        reasons.append(energy.problem)
    if run.lost:
        reasons.insert(0, f"server lost mid-run: {run.lost}")
    if metrics.completed == 0:
        reasons.append("no request succeeded")
    return _assemble(
        config,
        server,
        run,
        metrics,
        window,
        energy,
        poller,
        first_scrapes,
        idle_power_w,
        reasons,
        warnings,
    )


def _energy(config: BenchConfig, poller: Poller, window: Window | None) -> EnergyMeasurement | None:
    if not config.exporter_urls or window is None:
        return None
    return measure_energy(poller.exporter_scrapes, window, cap_ratio=config.cap_bound_ratio)


def _assemble(
    config: BenchConfig,
    server: ServerInfo,
    run: _Run,
    metrics: BenchMetrics,
    window: Window | None,
    energy: EnergyMeasurement | None,
    poller: Poller,
    first_scrapes: list[ExporterScrape],
    idle_power_w: float | None,
    reasons: list[str],
    warnings: list[str],
) -> BenchResult:
    energy_j = energy.energy_j if energy else None
    tokens = metrics.window_output_tokens
    batch = avg_running(poller.server_scrapes, window) if window else None
    batch_source = "server" if batch is not None else ("client" if window else None)
    return BenchResult(
        config=config,
        workload=_workload_summary(config, run.records),
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
        power_cap_bound_fraction=energy.cap_bound_fraction if energy else None,
        gpus=list(energy.gpus) if energy else [],
        avg_batch_size=batch if batch is not None else metrics.avg_in_flight,
        avg_batch_size_source=batch_source,
        idle_power_w=idle_power_w,
        run=RunSummary(
            output_tokens=metrics.run_output_tokens,
            input_tokens=metrics.total_input_tokens,
            request_throughput=metrics.run_request_throughput,
            output_token_throughput=metrics.run_output_token_throughput,
        ),
        environment=_environment(server, first_scrapes),
        valid=not reasons,
        invalid_reason="; ".join(reasons) or None,
        partial=run.lost is not None,
        errors=_errors(run.records),
        warnings=warnings,
        requests=_details(run, window) if config.save_detailed else None,
    )


def _latency(stats: LatencyStats) -> LatencySummary:
    return LatencySummary(mean=stats.mean, p50=stats.p50, p90=stats.p90, p99=stats.p99)


def _window_result(window: Window | None, run: _Run, metrics: BenchMetrics) -> WindowResult | None:
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
    )


def _workload_summary(config: BenchConfig, records: list[RequestRecord]) -> WorkloadSummary:
    prompt_tokens = [r.prompt_tokens for r in records if r.success and r.prompt_tokens is not None]
    max_tokens = [r.expected_output_len for r in records]
    return WorkloadSummary(
        dataset=config.dataset_name,
        num_prompts=config.num_prompts,
        sent=len(records),
        warmup_requests=config.warmup_requests,
        mean_prompt_tokens=sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None,
        mean_max_tokens=sum(max_tokens) / len(max_tokens) if max_tokens else 0.0,
        request_rate="inf" if config.closed_loop else config.request_rate,
        burstiness=config.burstiness,
        max_concurrency=config.max_concurrency,
        seed=config.seed,
    )


def _environment(server: ServerInfo, first_scrapes: list[ExporterScrape]) -> EnvironmentInfo:
    return EnvironmentInfo(
        jouletune_version=__version__,
        python_version=platform.python_version(),
        aiohttp_version=aiohttp.__version__,
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        server_model=server.model,
        server_model_root=server.model_root,
        server_version=server.version,
        gpu_models=sorted({g.model_name for s in first_scrapes for g in s.gpus if g.model_name}),
        gpu_driver_version=next(
            (s.driver_version for s in first_scrapes if s.driver_version), None
        ),
    )


def _details(run: _Run, window: Window | None) -> list[RequestDetail]:
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
        )
        for r in sorted(run.records, key=lambda r: r.index)
    ]


def _errors(records: list[RequestRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        if r.error is not None and len(seen) < _MAX_ERRORS_KEPT:
            seen.setdefault(r.error, None)
    return list(seen)
