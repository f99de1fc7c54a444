"""`run_bench`: one measured run, from probing the server to the finished `BenchResult`.

Order: probe server and exporters (fail fast, one-line errors) -> build the workload -> wait
until the server is idle and GPU power has settled -> warm-up requests -> idle again -> poll
exporters and server while the requests run -> steady-state window -> metrics, energy ->
result. Everything measured after the run starts ends up in the result, even when the run
is cut short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

import aiohttp

from jouletune.loadgen._assembly import MeasuredRun, Telemetry, build_result
from jouletune.loadgen._client import (
    build_body,
    request_headers,
    send_time_trace,
    stream_request,
)
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._dataset import DatasetError, SampleRequest, load_requests
from jouletune.loadgen._dispatch import Dispatch, Prefetch, ProgressCallback
from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._poller import Poller, ScrapeError, scrape_exporter
from jouletune.loadgen._prometheus import PrometheusSource
from jouletune.loadgen._result import (
    BenchResult,
)
from jouletune.loadgen._server import (
    ServerInfo,
    probe_server,
    wait_idle,
    wait_power_settled,
)
from jouletune.models import ModelArch, catalog_entry, model_arch
from jouletune.tokenizer import PromptTokenizer, TokenizerError, load_tokenizer

__all__ = ["ProgressCallback", "run_bench"]

_CONNECT_TIMEOUT_S = 10.0
# Prompts built ahead of the requests: twice the concurrency, at least this many.
_PREFETCH_MIN = 64
# Prometheus samples this long before the run are read too, so the window's start has a
# reading before it even at a 30-60 s scrape interval.
_PROMETHEUS_LOOKBACK_S = 120.0


async def run_bench(
    config: BenchConfig, *, progress: ProgressCallback | None = None
) -> BenchResult:
    """Run one benchmark and return its result (see `BenchResult`).

    Raises:
        BenchError: the run could not start (unreachable server or exporter, bad dataset,
            server never idle). Problems found during the run mark the result instead.
    """
    named = _tokenizer(config.tokenizer) if config.tokenizer else None  # fail before anything
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=_CONNECT_TIMEOUT_S, sock_read=config.request_timeout_s
    )
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[send_time_trace()]
    ) as session:
        server = await probe_server(session, config.base_url, config.model)
        tokenizer = named or _server_tokenizer(server)
        requests = _workload(config, tokenizer)
        prometheus = _prometheus(session, config)
        driver = await _probe_energy(session, config, prometheus)
        await _get_ready(session, config, server)
        if config.warmup_requests:
            await _warmup(session, config, server, requests)
            await _get_ready(session, config, server)
        idle_power_w, settled = await _settle_power(session, config)
        poller = Poller(
            session=session,
            exporter_urls=config.exporter_urls,
            dialect=config.dialect,
            chosen=config.gpu_filter,
            server_url=config.base_url if server.has_gauges else None,
            exporter_interval_s=config.exporter_poll_interval_s,
            server_interval_s=config.server_poll_interval_s,
        )
        poller.start()
        try:
            run = await _measure(session, config, server, requests, progress, tokenizer.name)
            await poller.wait_refreshed(config.energy_wait_s)
        finally:
            await poller.stop()
        energy_scrapes = poller.exporter_scrapes
        if prometheus is not None:
            energy_scrapes = await prometheus.scrapes(
                since_unix_s=run.t0_s + run.unix_offset_s - _PROMETHEUS_LOOKBACK_S,
                unix_offset_s=run.unix_offset_s,
                wait_s=config.energy_wait_s,
            )
    warnings = _poll_warnings(poller) + ([] if settled else [_unsettled(config)])
    telemetry = Telemetry(
        energy=energy_scrapes,
        server=poller.server_scrapes,
        driver_version=driver,
        model=_model_shape(config, server),
    )
    return build_result(config, server, run, telemetry, idle_power_w, warnings)


def _model_shape(config: BenchConfig, server: ServerInfo) -> tuple[str, ModelArch] | None:
    """The served model's shape for the diagnosis: the named model, else the server's (a
    local directory or a Hugging Face id's config.json); None when none can be read."""
    names = list(dict.fromkeys(n for n in (config.model, server.model_root, server.model) if n))
    # Names that need no network first: a catalog entry or a local directory.
    names.sort(key=lambda n: catalog_entry(n) is None and not Path(n).is_dir())
    for name in names:
        try:
            return name, model_arch(name)
        except ValueError:
            continue
    return None


def _tokenizer(name: str) -> PromptTokenizer:
    try:
        return load_tokenizer(name)
    except TokenizerError as err:
        raise BenchError(f"{err} (--tokenizer)") from None


def _server_tokenizer(server: ServerInfo) -> PromptTokenizer:
    """The model's tokenizer, as vLLM's benchmark defaults to; a sim-server says its own."""
    if server.tokenizer is not None:
        return _tokenizer(server.tokenizer)
    name = server.model_root or server.model
    try:
        return load_tokenizer(name)
    except TokenizerError as err:
        raise BenchError(f"{err}; pass --tokenizer with the model's tokenizer") from None


def _workload(config: BenchConfig, tokenizer: PromptTokenizer) -> Sequence[SampleRequest]:
    try:
        return load_requests(
            dataset=config.dataset_name,
            num_prompts=config.num_prompts + config.warmup_requests,
            seed=config.seed,
            tokenizer=tokenizer,
            dataset_path=Path(config.dataset_path) if config.dataset_path else None,
            random_input_len=config.random_input_len,
            random_output_len=config.random_output_len,
            random_range_ratio=config.random_range_ratio,
            sharegpt_output_len=config.sharegpt_output_len,
        )
    except DatasetError as err:
        raise BenchError(str(err)) from None


def _prometheus(session: aiohttp.ClientSession, config: BenchConfig) -> PrometheusSource | None:
    if config.prometheus_url is None:
        return None
    return PrometheusSource(session, config.prometheus_url, config.dialect, config.gpu_filter)


async def _probe_energy(
    session: aiohttp.ClientSession, config: BenchConfig, prometheus: PrometheusSource | None
) -> str | None:
    """Fail fast when no chosen GPU's energy can be read; returns the driver version the
    source's labels give, if any."""
    if prometheus is not None:
        return await prometheus.probe()
    driver = None
    for url in config.exporter_urls:
        try:
            scrape = await scrape_exporter(
                session,
                url,
                dialect=config.dialect,
                chosen=config.gpu_filter,
                timeout_s=_CONNECT_TIMEOUT_S,
            )
        except ScrapeError as err:
            raise BenchError(f"exporter unreachable: {err}") from None
        if not scrape.gpus:
            chosen = f" matching {config.gpu_filter.promql(config.dialect)}"
            raise BenchError(
                f"exporter {url} serves no {config.dialect.energy} series"
                f"{chosen if config.energy_gpus or config.energy_labels else ''}"
                f" (--energy-source {config.energy_source})"
            )
        driver = driver or scrape.driver_version
    return driver


async def _get_ready(
    session: aiohttp.ClientSession, config: BenchConfig, server: ServerInfo
) -> None:
    if server.has_gauges:
        await wait_idle(session, config.base_url, config.idle_timeout_s)


async def _settle_power(
    session: aiohttp.ClientSession, config: BenchConfig
) -> tuple[float | None, bool]:
    if not config.exporter_urls:  # Prometheus' samples are too sparse to tell
        return None, True
    if config.power_settle_timeout_s == 0:
        return None, True
    return await wait_power_settled(
        session,
        config.exporter_urls,
        config.power_settle_timeout_s,
        dialect=config.dialect,
        chosen=config.gpu_filter,
    )


async def _warmup(
    session: aiohttp.ClientSession,
    config: BenchConfig,
    server: ServerInfo,
    requests: Sequence[SampleRequest],
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
    requests: Sequence[SampleRequest],
    progress: ProgressCallback | None,
    tokenizer_name: str,
) -> MeasuredRun:
    """Send the measured requests: closed loop as `max_concurrency` streams that each send
    the next request when the last ends; open loop on the precomputed arrival times, queued
    behind the concurrency cap when there is one (vLLM's semaphore)."""
    measured = requests[: config.num_prompts]
    dispatch = Dispatch(session=session, config=config, server=server, progress=progress)
    ahead = min(len(measured), max(_PREFETCH_MIN, 2 * (config.max_concurrency or len(measured))))
    prefetch = Prefetch(measured, ahead=ahead, sent=lambda: len(dispatch.records))
    await prefetch.fill()
    unix_offset_s = _unix_offset_s()
    dispatch.start()
    prefetch.start()
    try:
        if config.closed_loop:
            await dispatch.closed_loop(measured)
        else:
            await dispatch.open_loop(measured)
    finally:
        await prefetch.stop()
    return MeasuredRun(
        records=dispatch.records,
        t0_s=dispatch.t0_s,
        unix_offset_s=unix_offset_s,
        lost=dispatch.watch.lost,
        requested_prompt_tokens={r.index: requests[r.index].prompt_len for r in dispatch.records},
        tokenizer=tokenizer_name,
    )


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
