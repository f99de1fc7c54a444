"""Polling `/metrics` during a run: every exporter (energy) and the server (batch gauges).

Each source gets its own task that scrapes, sleeps the rest of its interval, and keeps every
successful scrape; a failed scrape is counted and the last error kept, never raised, so a
slow or flapping exporter cannot abort the requests in flight (the energy check then reports
the gap if it touches a window edge).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from time import perf_counter

import aiohttp

from jouletune.loadgen._sources import Dialect, GpuFilter, parse_text
from jouletune.loadgen._telemetry import (
    ExporterScrape,
    ServerScrape,
    parse_server_text,
    refreshed_after,
)

__all__ = ["Poller", "ScrapeError", "metrics_url", "scrape_exporter", "scrape_server"]


class ScrapeError(Exception):
    """A `/metrics` endpoint could not be read or parsed; the message is one line."""


def metrics_url(url: str) -> str:
    """`url` itself when it names a path, else `url/metrics`."""
    base = url.rstrip("/")
    scheme_sep = base.find("//")
    has_path = "/" in base[scheme_sep + 2 :] if scheme_sep >= 0 else "/" in base
    return base if has_path else base + "/metrics"


async def _get_text(
    session: aiohttp.ClientSession, url: str, timeout_s: float
) -> tuple[float, str]:
    """GET `url`; returns (midpoint of the request on the perf_counter clock, body text)."""
    before_s = perf_counter()
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            text = await resp.text(errors="replace")
            if resp.status != 200:
                raise ScrapeError(f"{url}: HTTP {resp.status}: {' '.join(text.split())[:200]}")
    except TimeoutError:
        raise ScrapeError(f"{url}: no answer within {timeout_s:g}s") from None
    except aiohttp.ClientError as err:
        raise ScrapeError(f"{url}: {type(err).__name__}: {err}") from None
    return (before_s + perf_counter()) / 2, text


async def scrape_exporter(
    session: aiohttp.ClientSession,
    url: str,
    *,
    dialect: Dialect,
    chosen: GpuFilter,
    timeout_s: float = 2.0,
) -> ExporterScrape:
    """One scrape of an exporter: the chosen GPUs' readings in `dialect`'s series; raises
    ScrapeError when unreachable or malformed."""
    t_s, text = await _get_text(session, metrics_url(url), timeout_s)
    try:
        gpus, driver = parse_text(text, dialect, chosen)
    except ValueError as err:
        raise ScrapeError(f"{url}: not Prometheus text: {err}") from None
    return ExporterScrape(url=url, t_s=t_s, gpus=tuple(gpus), driver_version=driver or None)


async def scrape_server(
    session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 2.0
) -> ServerScrape:
    """One scrape of the server's vLLM gauges; raises ScrapeError when unreadable."""
    t_s, text = await _get_text(session, base_url.rstrip("/") + "/metrics", timeout_s)
    try:
        running, waiting = parse_server_text(text)
    except ValueError as err:
        raise ScrapeError(f"{base_url}/metrics: not Prometheus text: {err}") from None
    return ServerScrape(t_s=t_s, running=running, waiting=waiting)


@dataclass
class _Source:
    errors: int = 0
    last_error: str | None = None


@dataclass
class Poller:
    """Scrapes every exporter and (optionally) the server until `stop()`.

    Attributes:
        exporter_scrapes: every successful exporter scrape, in time order per exporter.
        server_scrapes: every successful server scrape, in time order.
    """

    session: aiohttp.ClientSession
    exporter_urls: list[str]
    dialect: Dialect
    chosen: GpuFilter
    server_url: str | None
    exporter_interval_s: float
    server_interval_s: float
    exporter_scrapes: list[ExporterScrape] = field(default_factory=list)
    server_scrapes: list[ServerScrape] = field(default_factory=list)
    _sources: dict[str, _Source] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start one polling task per source."""
        for url in self.exporter_urls:
            self._tasks.append(asyncio.create_task(self._loop(url, self.exporter_interval_s)))
        if self.server_url is not None:
            self._tasks.append(
                asyncio.create_task(
                    self._loop(self.server_url, self.server_interval_s, server=True)
                )
            )

    async def wait_refreshed(self, timeout_s: float) -> None:
        """Keep polling until every GPU's counter has shown a new value since now (an exporter
        may serve a value it collected earlier), or for `timeout_s` at most."""
        since_s = perf_counter()
        deadline_s = since_s + timeout_s
        while self.exporter_urls and not refreshed_after(self.exporter_scrapes, since_s):
            if perf_counter() >= deadline_s:
                return
            await asyncio.sleep(self.exporter_interval_s)

    async def stop(self) -> None:
        """Take one last scrape of each source, then end the tasks."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def errors(self) -> dict[str, tuple[int, str | None]]:
        """Per source URL: (failed scrapes, the last failure's message)."""
        return {url: (s.errors, s.last_error) for url, s in self._sources.items()}

    async def _loop(self, url: str, interval_s: float, *, server: bool = False) -> None:
        source = self._sources.setdefault(url, _Source())
        while True:
            began_s = perf_counter()
            stopping = self._stop.is_set()
            try:
                if server:
                    self.server_scrapes.append(await scrape_server(self.session, url))
                else:
                    scrape = await scrape_exporter(
                        self.session, url, dialect=self.dialect, chosen=self.chosen
                    )
                    self.exporter_scrapes.append(scrape)
            except ScrapeError as err:
                source.errors += 1
                source.last_error = str(err)
            if stopping:
                return
            wait_s = max(0.0, interval_s - (perf_counter() - began_s))
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait_s)
