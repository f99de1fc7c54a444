"""Sending the measured requests: prompts built ahead in a worker thread (`Prefetch`), and
the closed or open loop that sends them until the workload, `--duration` or the server runs
out (`Dispatch`), with one judgement of whether a failed connection means the server is
gone (`ServerWatch`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from time import perf_counter

import aiohttp

from jouletune.loadgen._arrivals import arrival_offsets_s
from jouletune.loadgen._client import build_body, request_headers, stream_request
from jouletune.loadgen._config import BenchConfig
from jouletune.loadgen._dataset import SampleRequest
from jouletune.loadgen._records import RequestRecord
from jouletune.loadgen._server import ServerInfo, is_alive

__all__ = ["Dispatch", "Prefetch", "ProgressCallback", "ServerWatch"]

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(done, total)` each time a measured request ends."""

_PREFETCH_POLL_S = 0.01


class ServerWatch:
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


class Prefetch:
    """Builds prompts ahead of the requests, in a worker thread.

    A prompt of the model's own tokenizer costs a decode/re-encode loop (~4 ms for 512 tokens):
    built on the event loop when a stream needs its next request, the streams that finish in
    one engine step would send one after another, a few ms apart, and the run would settle into
    staggered waves that vLLM's own client (which builds every prompt first) never sees.
    """

    def __init__(
        self, requests: Sequence[SampleRequest], *, ahead: int, sent: Callable[[], int]
    ) -> None:
        self._requests = requests
        self._ahead = ahead
        self._sent = sent
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    async def fill(self) -> None:
        """Build the first `ahead` prompts (before the clock starts)."""
        await asyncio.to_thread(self._build_to, self._ahead)

    def start(self) -> None:
        """Keep `ahead` prompts built beyond those sent, until `stop()`."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """End the prefetching (a build in progress finishes in its thread)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._next < len(self._requests):
            target = min(len(self._requests), self._sent() + self._ahead)
            if self._next < target:
                await asyncio.to_thread(self._build_to, target)
            else:
                await asyncio.sleep(_PREFETCH_POLL_S)

    def _build_to(self, end: int) -> None:
        while self._next < end:
            self._requests[self._next]  # built and cached by the lazy sequence
            self._next += 1


class Dispatch:
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
        self.watch = ServerWatch(session, config.base_url)
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

    async def closed_loop(self, measured: Sequence[SampleRequest]) -> None:
        """`max_concurrency` streams (all requests at once without a cap) share the queue."""
        queue = iter(enumerate(measured))
        streams = min(self._config.max_concurrency or len(measured), len(measured))

        async def stream() -> None:
            for i, req in queue:
                if self.stopped():
                    return
                await self._send(i, req)

        await asyncio.gather(*(stream() for _ in range(streams)))

    async def open_loop(self, measured: Sequence[SampleRequest]) -> None:
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
