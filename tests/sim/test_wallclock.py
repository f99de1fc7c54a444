"""The sim-server's wall clock: never wakes a loop early, lets an event cut a wait short, and
survives waiters that are cancelled (the API-server loop cancels one every step)."""

from __future__ import annotations

import asyncio
import time

from jouletune.sim._wallclock import WallClock


def test_sleepers_wake_in_time_order_and_never_early() -> None:
    async def run() -> list[tuple[float, float]]:
        clock, start = WallClock(), time.time()
        woke: list[tuple[float, float]] = []

        async def sleeper(t_s: float) -> None:
            await clock.sleep_until(t_s)
            woke.append((t_s, time.time()))

        # Queued out of order, and one whose time has already passed.
        targets = [start + d for d in (0.03, 0.01, 0.02, -1.0)]
        await asyncio.gather(*(sleeper(t) for t in targets))
        return woke

    woke = asyncio.run(run())
    assert [t for t, _ in woke] == sorted(t for t, _ in woke)
    assert all(at >= t for t, at in woke)


def test_an_event_ends_a_wait_and_cancelled_waiters_do_no_harm() -> None:
    async def run() -> tuple[float, float]:
        clock, event = WallClock(), asyncio.Event()
        start = time.time()
        asyncio.get_running_loop().call_later(0.02, event.set)
        await clock.wait_until(event, start + 30.0)
        cut_short = time.time() - start
        # The 30 s sleeper the wait left behind is cancelled; the clock still serves the next.
        target = time.time() + 0.02
        await clock.sleep_until(target)
        return cut_short, time.time() - target

    cut_short, late = asyncio.run(run())
    assert cut_short < 10.0  # the event, not the 30 s timeout, ended the wait
    assert late >= 0.0


def test_a_waiter_left_on_a_closed_loop_does_not_stop_the_clock() -> None:
    clock = WallClock()

    async def leave_a_waiter() -> None:
        waiter = asyncio.ensure_future(clock.sleep_until(time.time() + 0.05))
        await asyncio.sleep(0)  # queued on the clock
        waiter.cancel()

    async def sleep_past_it() -> float:
        target = time.time() + 0.2
        await clock.sleep_until(target)
        return time.time() - target

    asyncio.run(leave_a_waiter())  # closes its loop with the waiter's time still ahead
    assert asyncio.run(asyncio.wait_for(sleep_past_it(), timeout=10.0)) >= 0.0
