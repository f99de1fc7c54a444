"""Energy read back from Prometheus instead of scraped live: for clusters where the GPUs'
exporter (usually dcgm-exporter) is only reachable through the cluster's Prometheus.

After the run, one range query per series of the source (`NAME{selector}[Ns]` at an instant:
Prometheus answers with the raw samples and their scrape timestamps) turns into the same
`ExporterScrape`s a live poll would have produced, on the run's perf_counter clock, so the
window rule and the energy arithmetic are the same. Prometheus's HTTP API:
https://prometheus.io/docs/prometheus/latest/querying/api/
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from jouletune.loadgen._errors import BenchError
from jouletune.loadgen._sources import Dialect, GpuFilter, Sample, readings
from jouletune.loadgen._telemetry import ExporterScrape, refreshed_after

__all__ = ["PrometheusSource"]

_TIMEOUT_S = 10.0
_POLL_S = 1.0


class PrometheusSource:
    """The chosen GPUs' series of one dialect in one Prometheus.

    Args:
        session: the run's HTTP session.
        url: Prometheus's base URL (`http://prometheus:9090`).
        dialect: which exporter's series to read.
        chosen: which GPUs count; must not be empty-handed (a whole cluster's GPUs otherwise).
    """

    def __init__(
        self, session: aiohttp.ClientSession, url: str, dialect: Dialect, chosen: GpuFilter
    ) -> None:
        self._session = session
        self.url = url.rstrip("/")
        self._dialect = dialect
        self._chosen = chosen

    @property
    def selector(self) -> str:
        """The energy series' PromQL selector, for messages."""
        return f"{self._dialect.energy}{self._chosen.promql(self._dialect)}"

    async def probe(self) -> str | None:
        """Check that Prometheus has the chosen energy series now; returns the driver version
        its labels give, if any.

        Raises:
            BenchError: Prometheus is unreachable, or no series matches.
        """
        data = await self._query(self.selector)
        if not data:
            raise BenchError(f"Prometheus {self.url} has no series {self.selector}")
        label = self._dialect.driver_label or ""
        return next((s["metric"][label] for s in data if label in s["metric"]), None)

    async def scrapes(
        self, *, since_unix_s: float, unix_offset_s: float, wait_s: float
    ) -> list[ExporterScrape]:
        """Every sample since `since_unix_s`, as scrapes on the perf_counter clock; waits up
        to `wait_s` until every chosen GPU's counter has a new value after now (Prometheus
        scrapes, and the exporter collects, on their own intervals)."""
        now_s = time.perf_counter()
        deadline_s = now_s + wait_s
        while True:
            found = [
                ExporterScrape(
                    url=self.url,
                    t_s=t_unix - unix_offset_s,
                    gpus=tuple(readings(samples, self._dialect, self._chosen)),
                )
                for t_unix, samples in sorted((await self._samples(since_unix_s)).items())
            ]
            if refreshed_after(found, now_s) or time.perf_counter() >= deadline_s:
                return found
            await asyncio.sleep(_POLL_S)

    async def _samples(self, since_unix_s: float) -> dict[float, list[Sample]]:
        now = time.time()
        span_s = max(1, math.ceil(now - since_unix_s))
        by_time: dict[float, list[Sample]] = {}
        for name in self._dialect.series:
            query = f"{name}{self._chosen.promql(self._dialect)}[{span_s}s]"
            for series in await self._query(query, at_unix_s=now):
                labels: Mapping[str, str] = series["metric"]
                for t_unix, value in series.get("values", []):
                    by_time.setdefault(float(t_unix), []).append((name, labels, float(value)))
        return by_time

    async def _query(self, query: str, *, at_unix_s: float | None = None) -> list[Any]:
        params = {"query": query}
        if at_unix_s is not None:
            params["time"] = f"{at_unix_s:.3f}"
        try:
            async with self._session.get(
                f"{self.url}/api/v1/query",
                params=params,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
            ) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise BenchError(f"Prometheus {self.url}: {type(err).__name__}: {err}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else str(body)[:200]
            raise BenchError(f"Prometheus {self.url} refused {query!r}: {error}")
        result: list[Any] = body["data"]["result"]
        return result
