"""Talking to the server outside the measured requests: its model, version, liveness, and
waiting until it is idle (the drain rule of docs/contract.md: `vllm:num_requests_running` and
`_waiting` read 0, and the GPU's power has settled, before each measurement)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp

from jouletune.contract import (
    DRAIN_POWER_ABS_TOL_W,
    DRAIN_POWER_REL_TOL,
    DRAIN_POWER_STABLE_READS,
)
from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._poller import ScrapeError, scrape_exporter, scrape_server
from jouletune.loadgen._sources import Dialect, GpuFilter

__all__ = ["ServerInfo", "is_alive", "probe_server", "wait_idle", "wait_power_settled"]

_PROBE_TIMEOUT_S = 10.0
_IDLE_POLL_S = 0.1
_POWER_POLL_S = 0.2


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerInfo:
    """What the server said about itself."""

    model: str
    model_root: str | None
    version: str | None
    has_gauges: bool
    tokenizer: str | None = None  # the tokenizer a jouletune sim-server counts with


async def _get_json(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status != 200:
            raise BenchError(f"{url} answered HTTP {resp.status}")
        return await resp.json(content_type=None)


async def probe_server(
    session: aiohttp.ClientSession, base_url: str, model: str | None
) -> ServerInfo:
    """Check the server answers; find its model, version and whether it has vLLM's gauges.

    Raises:
        BenchError: unreachable, not OpenAI-compatible, or no model to use.
    """
    url = base_url + "/v1/models"
    try:
        data = await _get_json(session, url, _PROBE_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError) as err:
        raise BenchError(f"cannot reach the server at {base_url}: {_reason(err)}") from None
    except ValueError:
        raise BenchError(
            f"{url} did not answer JSON: is this an OpenAI-compatible server?"
        ) from None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise BenchError(f"{url} lists no model; pass --model or check the server")
    first = models[0]
    root = first.get("root") if isinstance(first.get("root"), str) else None
    version, tokenizer = await _version(session, base_url)
    return ServerInfo(
        model=model or str(first.get("id")),
        model_root=root,
        version=version,
        has_gauges=await _has_gauges(session, base_url),
        tokenizer=tokenizer,
    )


async def _version(session: aiohttp.ClientSession, base_url: str) -> tuple[str | None, str | None]:
    """(the server's version, the tokenizer it counts with: only a sim-server says)."""
    try:
        data = await _get_json(session, base_url + "/version", _PROBE_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, BenchError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    version, tokenizer = data.get("version"), data.get("tokenizer")
    return (
        None if version is None else str(version),
        tokenizer if isinstance(tokenizer, str) else None,
    )


async def _has_gauges(session: aiohttp.ClientSession, base_url: str) -> bool:
    try:
        scrape = await scrape_server(session, base_url)
    except ScrapeError:
        return False
    return scrape.running is not None


async def is_alive(session: aiohttp.ClientSession, base_url: str, timeout_s: float = 5.0) -> bool:
    """True when the server still answers `/v1/models`."""
    try:
        await _get_json(session, base_url + "/v1/models", timeout_s)
    except (aiohttp.ClientError, TimeoutError, BenchError, ValueError):
        return False
    return True


async def wait_idle(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> None:
    """Poll the server's gauges until running and waiting both read 0.

    Raises:
        BenchError: still busy after `timeout_s` (another client?), or the server went away.
    """
    deadline_s = perf_counter() + timeout_s
    last = "no reading"
    while True:
        try:
            scrape = await scrape_server(session, base_url)
        except ScrapeError as err:
            last = str(err)
        else:
            if not scrape.running and not scrape.waiting:
                return
            last = f"running={scrape.running:g} waiting={scrape.waiting or 0:g}"
        if perf_counter() >= deadline_s:
            raise BenchError(
                f"the server was not idle within {timeout_s:g}s ({last}); is another client "
                f"sending requests?"
            )
        await asyncio.sleep(_IDLE_POLL_S)


async def wait_power_settled(
    session: aiohttp.ClientSession,
    exporter_urls: list[str],
    timeout_s: float,
    *,
    dialect: Dialect,
    chosen: GpuFilter,
) -> tuple[float | None, bool]:
    """Poll the exporters until every GPU's power holds steady; returns (total W, settled).

    A GPU can stay at full power for seconds after a cancelled run (docs/contract.md); its energy
    must not land in the next measurement. Gives up after `timeout_s` and says so.
    """
    deadline_s = perf_counter() + timeout_s
    history: list[list[float]] = []
    while True:
        try:
            scrapes = [
                await scrape_exporter(session, url, dialect=dialect, chosen=chosen)
                for url in exporter_urls
            ]
        except ScrapeError:
            scrapes = []
        powers = [g.power_w for s in scrapes for g in s.gpus if g.power_w is not None]
        if powers:
            history.append(powers)
        if _stable(history[-DRAIN_POWER_STABLE_READS:]):
            return sum(history[-1]), True
        if perf_counter() >= deadline_s:
            return (sum(history[-1]) if history else None), False
        await asyncio.sleep(_POWER_POLL_S)


def _stable(reads: list[list[float]]) -> bool:
    if len(reads) < DRAIN_POWER_STABLE_READS or len({len(r) for r in reads}) != 1:
        return False
    for per_gpu in zip(*reads, strict=True):
        spread_w = max(per_gpu) - min(per_gpu)
        if spread_w > max(DRAIN_POWER_ABS_TOL_W, DRAIN_POWER_REL_TOL * max(per_gpu)):
            return False
    return True


def _reason(err: BaseException) -> str:
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return "no answer within the timeout"
    return " ".join(f"{type(err).__name__}: {err}".split())
