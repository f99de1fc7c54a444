"""Waking the sim-server's loops at wall-clock times, to a tenth of a millisecond.

asyncio's timers wake up to a millisecond late: on Linux its selector passes `epoll_wait` a
timeout in whole milliseconds, rounded up. The engine keeps its own clock, so the lateness
never accumulates, but every step's tokens leave 0-1 ms late by an amount that cycles with
the step time: at one stream of 6.39 ms steps the client read gaps of 6.2 ms with a 7.2 ms
one every sixth step (ITL p50 6.21 ms against the model's 6.39 ms; the mean stayed right).
A measured ITL p50 then misses the model by 3-4%, which a calibration against the sim-server
would fit as if the GPU were faster. One thread waits on a condition variable (microsecond
timeouts) and hands each wake-up to the event loop, which `call_soon_threadsafe` wakes at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time

__all__ = ["WallClock"]


class WallClock:
    """Sleeps until wall-clock times (`time.time()`) for asyncio coroutines."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    async def sleep_until(self, t_s: float) -> None:
        """Return at `t_s` (at once if it has passed); cancelling the caller is safe."""
        if t_s <= time.time():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._cond:
            heapq.heappush(self._due, (t_s, next(self._order), future))
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sim-wallclock", daemon=True)
            self._thread.start()
        await future

    async def wait_until(self, event: asyncio.Event, t_s: float) -> None:
        """Return when `event` is set or at `t_s`, whichever comes first."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.sleep_until(t_s))}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._due:
                    self._cond.wait()
                    continue
                delay = self._due[0][0] - time.time()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, future = heapq.heappop(self._due)
            if future.done():  # its waiter was cancelled: nothing to wake
                continue
            # A closed loop (its waiter gone with it) refuses the call; later waiters may
            # belong to a new loop.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter leaves its future done
        future.set_result(None)
