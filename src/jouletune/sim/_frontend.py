"""vLLM's API-server process: one event loop that every request and every token goes through.

vLLM 0.24 serves HTTP from one process (one asyncio event loop) and runs the engine core in
another. Everything a request needs on its way in (HTTP parsing, validation, tokenization,
the hand-off to the engine core over ZMQ) and everything its tokens need on the way out
(detokenizing, building the SSE chunk, writing it) runs as coroutines on that one loop, which
switches between them at every `await`. With many coroutines ready at once they advance
together, each getting a share of the one CPU: processor sharing. So a request that arrives
while the loop writes a step's chunks for every running stream is slowed by them, and a step's
chunks are slowed by the requests being taken in; when more work arrives than the loop can do
(a wave of streams finishing together, each sending its next request), everything in progress
slows down and finishes late, together.

`ApiServer` is that loop as an egalitarian processor-sharing server:

* a request arriving at `t` is a job of `request_s`; once done it is rendered (tokenized) off
  the loop, in vLLM's renderer thread (`renderer_num_workers`, 1 by default), one prompt at a
  time in the order they come, each taking `render_s(request)`; once rendered it reaches the
  engine core `latency_s` later (`PerfConstants.frontend_s`: network, IPC and wake-ups, which
  do not occupy the loop). The renderer is why a burst of returning requests reaches the
  scheduler one by one (measured 1.1 ms apart per 1024-token prompt at any load), so an idle
  engine starts a step with the first of them alone;
* an engine step's output, arriving at the step's end, is one job of `chunk_s` per streamed
  chunk (one per request that emitted a token in the step); the step's chunks reach the
  clients when they are done (being alike and arriving together, they finish together).

While `k` jobs are in progress each is served at rate 1/k. The model is pure bookkeeping on
a caller-supplied clock: `advance(horizon_s)` serves the queue up to `horizon_s`, in time order
of arrivals and completions, and hands each completion to its callback; the caller must have
submitted every arrival up to the horizon (a completion depends on every arrival before it).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ApiServer"]

R = TypeVar("R")  # a request
Out = TypeVar("Out")  # one step's output


class ApiServer(Generic[R, Out]):
    """Processor sharing between request intake and step output, on the caller's clock.

    Args:
        request_s: loop time to take in one request (parse, validate, hand off).
        chunk_s: loop time per streamed chunk of a step's output (detokenize, build, write).
        latency_s: delay from a request's rendering to the engine core having it.
        render_s: renderer time of a request (tokenizing its prompt), first come first served.
        on_ready: called with a request and the instant it reaches the engine core.
        on_output: called with a step's output and the instant its chunks reach the clients.
    """

    def __init__(
        self,
        *,
        request_s: float,
        chunk_s: float,
        latency_s: float,
        render_s: Callable[[R], float],
        on_ready: Callable[[R, float], None],
        on_output: Callable[[Out, float], None],
    ) -> None:
        if min(request_s, chunk_s, latency_s) < 0:
            raise ValueError(f"negative cost: {request_s=} {chunk_s=} {latency_s=}")
        self.request_s = request_s
        self.chunk_s = chunk_s
        self.latency_s = latency_s
        self._render_s = render_s
        self._rendered_s = -math.inf  # when the renderer is through with what it was given
        self._on_ready = on_ready
        self._on_output = on_output
        self._order = itertools.count()
        # Arrived, not yet taken up: (arrival, order, request or None, output or None, jobs).
        self._arrivals: list[tuple[float, int, R | None, Out | None, int]] = []
        # In progress: (finish tag, order, request or None, output or None, jobs).
        self._jobs: list[tuple[float, int, R | None, Out | None, int]] = []
        # Processor-sharing clock: `_served` is the service every job in progress has had
        # since the loop started (the virtual time), as of `_now_s`; `_active` jobs share it.
        self._now_s = -math.inf
        self._served = 0.0
        self._active = 0
        self.work_s = 0.0  # loop time of all work taken up so far

    def __len__(self) -> int:
        """Pieces of work arrived or in progress (a step's output counts once)."""
        return len(self._arrivals) + len(self._jobs)

    def submit(self, request: R, arrival_s: float) -> None:
        """A request arrives at `arrival_s`."""
        heapq.heappush(self._arrivals, (arrival_s, next(self._order), request, None, 1))

    def output(self, output: Out, chunks: int, arrival_s: float) -> None:
        """A step's output of `chunks` chunks arrives at `arrival_s` (the step's end)."""
        if chunks > 0:
            heapq.heappush(self._arrivals, (arrival_s, next(self._order), None, output, chunks))

    def next_event_s(self) -> float | None:
        """The next arrival or completion, if nothing else arrives first (None: idle)."""
        events = []
        if self._arrivals:
            events.append(self._arrivals[0][0])
        if self._jobs:
            events.append(self._completion_s())
        return min(events, default=None)

    def advance(self, horizon_s: float) -> None:
        """Serve up to `horizon_s`: take up arrivals and complete jobs in time order.

        A callback may submit more work (a client sending its next request as its last chunk
        arrives); whatever arrives by the horizon is served in the same call.
        """
        arrivals, jobs = self._arrivals, self._jobs
        while arrivals or jobs:
            arrival_s = arrivals[0][0] if arrivals else math.inf
            done_s = self._completion_s() if jobs else math.inf
            if min(arrival_s, done_s) > horizon_s:
                return
            if done_s <= arrival_s:
                tag, _, request, output, count = heapq.heappop(jobs)
                self._now_s, self._served = max(self._now_s, done_s), tag
                self._active -= count
                if request is not None:
                    self._rendered_s = max(done_s, self._rendered_s) + self._render_s(request)
                    self._on_ready(request, self._rendered_s + self.latency_s)
                else:
                    assert output is not None
                    self._on_output(output, done_s)
            else:
                _, order, request, output, count = heapq.heappop(arrivals)
                self._run_until(arrival_s)
                size_s = self.request_s if request is not None else self.chunk_s
                self.work_s += size_s * count
                heapq.heappush(jobs, (self._served + size_s, order, request, output, count))
                self._active += count

    def _completion_s(self) -> float:
        """When the job in progress with the least service left finishes, if nothing else
        arrives first."""
        return self._now_s + (self._jobs[0][0] - self._served) * self._active

    def _run_until(self, t_s: float) -> None:
        if t_s <= self._now_s:
            return
        if self._active:
            self._served += (t_s - self._now_s) / self._active
        self._now_s = t_s
