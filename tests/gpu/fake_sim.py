"""A small real HTTP server that speaks the sim-server's GPU endpoints, for tests.

It stands in for `jouletune sim-server` where a test needs GPUs over HTTP and control over
their answers: `GET /sim/gpus`, `PUT /sim/gpus/{index}/power-limit` and
`PUT /sim/gpus/{index}/sm-clock-lock`. It runs aiohttp on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.procs import free_port


@dataclass
class FakeSimState:
    """What the fake server serves; tests read and change it between requests."""

    num_gpus: int = 2
    power_w: float = 350.0
    limits_w: list[float] = field(default_factory=list)
    range_w: tuple[float, float, float] | None = (200.0, 700.0, 700.0)
    fail_status: int | None = None  # answer every GPU request with this HTTP status
    puts: list[tuple[int, float]] = field(default_factory=list)
    locks_mhz: list[int | None] = field(default_factory=list)
    lock_puts: list[tuple[int, int | None]] = field(default_factory=list)
    gets: int = 0
    energy_j: float = 1000.0
    last_read_s: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not self.limits_w:
            self.limits_w = [700.0] * self.num_gpus
        if not self.locks_mhz:
            self.locks_mhz = [None] * self.num_gpus

    def gpu_json(self, index: int) -> dict[str, Any]:
        now = time.time()
        # A counter that grows at power_w (for every GPU alike), never backwards.
        self.energy_j += self.power_w * max(0.0, now - self.last_read_s)
        self.last_read_s = now
        entry: dict[str, Any] = {
            "index": index,
            "uuid": f"GPU-fake-{index}",
            "name": "Simulated H100",
            "energy_j": self.energy_j,
            "power_w": self.power_w,
            "power_limit_w": self.limits_w[index],
            "sm_clock_hz": (self.locks_mhz[index] or 1980) * 1e6,
            "utilization_ratio": 0.5,
            "memory_used_bytes": 1 << 30,
            "memory_total_bytes": 80 << 30,
            "temperature_c": 41.0,
            "timestamp_s": now,
        }
        if self.range_w is not None:
            lo, hi, default = self.range_w
            entry["power_limit_range"] = {"min_w": lo, "max_w": hi, "default_w": default}
            entry["sm_clock_range"] = {"min_mhz": 345, "max_mhz": 1980}
        return entry


def _app(state: FakeSimState) -> web.Application:
    async def get_gpus(request: web.Request) -> web.Response:
        state.gets += 1
        if state.fail_status is not None:
            return web.Response(status=state.fail_status, text="fake failure")
        return web.json_response({"gpus": [state.gpu_json(i) for i in range(state.num_gpus)]})

    async def put_limit(request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        watts = float((await request.json())["watts"])
        if state.fail_status is not None:
            return web.Response(status=state.fail_status, text="fake failure")
        state.puts.append((index, watts))
        state.limits_w[index] = watts
        return web.json_response(state.gpu_json(index))

    async def put_lock(request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        mhz = (await request.json())["mhz"]
        if state.fail_status is not None:
            return web.Response(status=state.fail_status, text="fake failure")
        state.lock_puts.append((index, mhz))
        state.locks_mhz[index] = mhz
        return web.json_response(state.gpu_json(index))

    app = web.Application()
    app.router.add_get("/sim/gpus", get_gpus)
    app.router.add_put("/sim/gpus/{index}/power-limit", put_limit)
    app.router.add_put("/sim/gpus/{index}/sm-clock-lock", put_lock)
    return app


@contextmanager
def fake_sim_server(state: FakeSimState, port: int | None = None) -> Iterator[str]:
    """Serve `state` on loopback (a free port unless given) until the block ends; yields the
    base URL."""
    port = port or free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(state), access_log=None)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-sim", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise TimeoutError("fake sim-server did not start within 10 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
