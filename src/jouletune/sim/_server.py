"""The sim-server's HTTP side: vLLM's OpenAI API, its `/metrics`, and the `/sim/*` endpoints.

One asyncio loop runs both the HTTP server (aiohttp) and the engine's step loop. The step loop
keeps an absolute clock: step k+1 starts where step k ended on the model's clock, and the loop
sleeps until each step's end on the wall clock, so wake-up jitter never accumulates into drift;
both loops sleep on `_wallclock.WallClock`, since asyncio's timers wake up to 1 ms late.
Requests are read by `_requests`; each one's tokens go out through its `_stream.SseStream`,
which the engine calls at the end of every step (no per-token task wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from jouletune.gpu import gpu_entry, sm_clock_lock_mhz
from jouletune.gpu.simulated import SimulatedGpu
from jouletune.sim._engine import Engine, EngineConfig, SimRequest, Step
from jouletune.sim._metrics import VllmMetrics
from jouletune.sim._perf import step_work
from jouletune.sim._requests import BadRequest, parse_request
from jouletune.sim._stream import SseStream, usage
from jouletune.sim._wallclock import WallClock
from jouletune.tokenizer import WORDS, PromptTokenizer

__all__ = ["SimServer"]

_log = logging.getLogger("jouletune.sim")

# Falling this far behind the wall clock means the host cannot keep up; resynchronise rather
# than replay a burst of back-to-back steps (logged, so a run can be discarded).
_MAX_LAG_S = 1.0


class SimServer:
    """A simulated vLLM server: engine model, simulated GPUs, HTTP app.

    Args:
        config: the engine settings (from the `vllm serve` flags).
        served_model_name: the name clients use (`model` in requests, `model_name` label).
        model_path: what `--model` said (reported as the model's `root`).
        gpus: one simulated GPU per TP rank, already marked loaded.
        idle_gpus: the node's other GPUs, which no engine drives: served by `/sim/gpus` (and
            their limits set there) as NVML would show them, never by the ground truth.
    """

    def __init__(
        self,
        *,
        config: EngineConfig,
        served_model_name: str,
        model_path: str,
        gpus: Sequence[SimulatedGpu],
        idle_gpus: Sequence[SimulatedGpu] = (),
        tokenizer: PromptTokenizer | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.served_model_name = served_model_name
        self.model_path = model_path
        self.gpus = list(gpus)
        # In index order, as NVML lists them: the engine's need not be the first.
        self.node_gpus = sorted([*self.gpus, *idle_gpus], key=lambda g: g.index)
        self.registry = CollectorRegistry()
        self.engine = Engine(
            config=config,
            gpus=self.gpus,
            on_step=self._on_step,
            on_request_done=self._on_done,
            on_deliver=self._on_deliver,
        )
        self.metrics = VllmMetrics(
            registry=self.registry,
            engine=self.engine,
            model_name=served_model_name,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        self._wake = asyncio.Event()  # the engine loop: a request may be schedulable
        self._api_wake = asyncio.Event()  # the API-server model: new work arrived
        self._clock = WallClock()  # asyncio's own timers wake up to 1 ms late
        self._broken: list[SimRequest] = []
        self._created = int(time.time())
        self.lag_events = 0

    # --- app ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application; the engine loop runs for the app's lifetime."""
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sim/gpus", self._get_gpus)
        app.router.add_put("/sim/gpus/{index}/power-limit", self._put_power_limit)
        app.router.add_put("/sim/gpus/{index}/sm-clock-lock", self._put_sm_clock_lock)
        app.router.add_get("/sim/truth", self._truth)
        app.cleanup_ctx.append(self._engine_ctx)
        return app

    async def _engine_ctx(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(self._run_engine(), name="sim-engine"),
            asyncio.create_task(self._run_frontend(), name="sim-api-server"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- engine loop ----------------------------------------------------------------------

    async def _run_frontend(self) -> None:
        """Write chunks and hand requests to the engine as the modelled API server finishes
        them: wake at its next completion, or when new work arrives."""
        engine = self.engine
        while True:
            engine.advance_frontend(time.time())
            if engine.pending:
                self._wake.set()
            next_s = engine.next_frontend_event_s()
            self._api_wake.clear()
            if next_s is None:
                await self._api_wake.wait()
                continue
            await self._clock.wait_until(self._api_wake, next_s)

    async def _run_engine(self) -> None:
        engine = self.engine
        free_s = time.time()  # when the engine finished its last step (model clock)
        while True:
            if not engine.can_schedule():
                ready_s = engine.next_ready_s(time.time())
                if ready_s is None:
                    self._wake.clear()
                    await self._wake.wait()
                    # Idle time is not work to catch up on: the next step starts now.
                    free_s = max(free_s, time.time())
                    continue
                free_s = max(free_s, ready_s)
                await self._clock.sleep_until(free_s)
            now = time.time()
            if now - free_s > _MAX_LAG_S:
                self.lag_events += 1
                _log.warning(
                    "sim engine %.2f s behind the wall clock; resynchronising", now - free_s
                )
                free_s = now
            step = engine.begin_step(free_s)
            if step is None:
                # waiting requests that cannot be admitted and nothing running: wait for more
                self._wake.clear()
                await self._wake.wait()
                free_s = max(free_s, time.time())
                continue
            await self._clock.sleep_until(step.end_s)
            engine.finish_step(step)
            self._api_wake.set()  # the step's output is new work for the API server
            free_s = step.end_s
            self._abort_broken(step.end_s)

    def _abort_broken(self, t_s: float) -> None:
        if not self._broken:
            return
        broken, self._broken = self._broken, []
        for req in broken:
            self.engine.abort(req, t_s)

    def _on_step(self, step: Step) -> None:
        work = step_work(
            arch=self.config.arch,
            gpu=self.config.gpu,
            tp=self.config.tensor_parallel_size,
            batch=step.batch,
            perf=self.config.perf,
        )
        self.metrics.on_step(step, flops_per_gpu=work.flops, bytes_per_gpu=work.bytes_moved)
        for req, _ in step.scheduled:
            listener = req.listener
            if isinstance(listener, SseStream) and listener.broken and req.finish_reason is None:
                self._broken.append(req)

    def _on_done(self, req: SimRequest) -> None:
        self.metrics.on_request_done(req)

    def _on_deliver(self, output: Sequence[tuple[SimRequest, bool]], t_s: float) -> None:
        self.metrics.on_deliver(output, t_s)

    # --- OpenAI API -----------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        arrival_s = time.time()
        # Let the rest of a burst stamp its arrival before this handler's work (~60 µs) runs:
        # stamped one after another, a wave of returning requests would reach the modelled API
        # server spread out by this process's own time, and waves the model keeps would split.
        await asyncio.sleep(0)
        try:
            body = await request.json()
            parsed = parse_request(
                body,
                chat=chat,
                served=(self.served_model_name, self.model_path),
                max_model_len=self.config.max_model_len,
                tokenizer=self.tokenizer,
            )
        except json.JSONDecodeError:
            return _error(400, "request body is not valid JSON")
        except BadRequest as err:
            return _error(err.status, str(err))
        base = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{base}"
        loop = asyncio.get_running_loop()
        stream = SseStream(
            request_id=request_id,
            model=str(body.get("model") or self.served_model_name),
            created=int(arrival_s),
            parsed=parsed,
            loop=loop,
        )
        req = SimRequest(
            request_id=request_id,
            prompt_tokens=parsed.prompt_tokens,
            max_tokens=parsed.max_tokens,
            arrival_s=arrival_s,
            listener=stream,
            block_hashes=parsed.block_hashes,
        )
        response: web.StreamResponse
        if parsed.stream:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8"}
            )
            await response.prepare(request)
            assert request.transport is not None
            stream.attach(request.transport)
        self.metrics.on_request_added(max_tokens=parsed.max_tokens)
        self.engine.add(req)
        self._api_wake.set()
        try:
            await stream.done
        except asyncio.CancelledError:
            self.engine.abort(req, time.time())
            raise
        if parsed.stream:
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        return web.json_response(self._full_response(req, stream, request_id, body, arrival_s))

    def _full_response(
        self,
        req: SimRequest,
        stream: SseStream,
        request_id: str,
        body: dict[str, Any],
        arrival_s: float,
    ) -> dict[str, Any]:
        text = b"".join(stream.parts).decode()
        model = body.get("model") or self.served_model_name
        if stream.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": req.finish_reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": req.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        return {
            "id": request_id,
            "object": obj,
            "created": int(arrival_s),
            "model": model,
            "choices": [choice],
            "usage": usage(req),
        }

    # --- other endpoints ------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        from jouletune import __version__

        # `tokenizer` is the sim's own field: what it counts prompt tokens with, so that a
        # bench without --tokenizer builds prompts the same way.
        tokenizer = WORDS if self.tokenizer is None else self.tokenizer.name
        return web.json_response(
            {"version": f"jouletune-sim {__version__} (vLLM 0.24 API)", "tokenizer": tokenizer}
        )

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.served_model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": self.model_path,
            "parent": None,
            "max_model_len": self.config.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _get_gpus(self, request: web.Request) -> web.Response:
        return web.json_response({"gpus": [self._gpu_json(g) for g in self.node_gpus]})

    def _node_gpu(self, request: web.Request) -> SimulatedGpu | web.Response:
        """The GPU the request's path names, or the 404 answer."""
        try:
            return self.node_gpus[int(request.match_info["index"])]
        except (ValueError, IndexError):
            return _error(
                404,
                f"no GPU {request.match_info['index']!r}; this server has {len(self.node_gpus)}",
            )

    async def _put_power_limit(self, request: web.Request) -> web.Response:
        gpu = self._node_gpu(request)
        if isinstance(gpu, web.Response):
            return gpu
        index = gpu.index
        try:
            body = await request.json()
            watts = float(body["watts"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return _error(400, 'expected a JSON body {"watts": <number>}')
        rng = gpu.power_limit_range()
        if not (math.isfinite(watts) and rng.min_w <= watts <= rng.max_w):
            return _error(400, f"power limit {watts:g} W is outside {rng.min_w:g}-{rng.max_w:g} W")
        gpu.set_power_limit_w(watts)
        _log.info("GPU %d power limit set to %g W", index, watts)
        return web.json_response(self._gpu_json(gpu))

    async def _put_sm_clock_lock(self, request: web.Request) -> web.Response:
        gpu = self._node_gpu(request)
        if isinstance(gpu, web.Response):
            return gpu
        try:
            mhz = sm_clock_lock_mhz(await request.json())
        except ValueError:  # json.JSONDecodeError included
            return _error(400, 'expected a JSON body {"mhz": <whole number or null>}')
        rng = gpu.sm_clock_range()
        if mhz is not None and not rng.min_mhz <= mhz <= rng.max_mhz:
            return _error(400, f"SM clock {mhz} MHz is outside {rng.min_mhz}-{rng.max_mhz} MHz")
        gpu.set_sm_clock_lock_mhz(mhz)
        if mhz is None:
            _log.info("GPU %d SM clock lock reset", gpu.index)
        else:
            _log.info("GPU %d SM clock locked at %d MHz", gpu.index, mhz)
        return web.json_response(self._gpu_json(gpu))

    async def _truth(self, request: web.Request) -> web.Response:
        try:
            start_s = float(request.query["start_unix_s"])
            end_s = float(request.query["end_unix_s"])
        except (KeyError, ValueError):
            return _error(400, "expected numeric query parameters start_unix_s and end_unix_s")
        if not (math.isfinite(start_s) and math.isfinite(end_s) and start_s <= end_s):
            return _error(400, f"need start_unix_s <= end_unix_s, got {start_s} and {end_s}")
        # The future is not simulated yet: instants after now read as now.
        now = time.time()
        start_s, end_s = min(start_s, now), min(end_s, now)
        per_gpu = [g.energy_between(start_s, end_s) for g in self.gpus]
        engine = self.engine
        records = engine.records_finished_between(start_s, end_s)
        return web.json_response(
            {
                "start_unix_s": start_s,
                "end_unix_s": end_s,
                "energy_j": sum(per_gpu),
                "gpus": [
                    {"index": g.index, "energy_j": e}
                    for g, e in zip(self.gpus, per_gpu, strict=True)
                ],
                "output_tokens": engine.tokens_emitted_by(end_s)
                - engine.tokens_emitted_by(start_s),
                "requests": [
                    {
                        "request_id": r.request_id,
                        "arrival_unix_s": r.arrival_unix_s,
                        "first_token_unix_s": r.first_token_unix_s,
                        "last_token_unix_s": r.last_token_unix_s,
                        "prompt_tokens": r.prompt_tokens,
                        "output_tokens": r.output_tokens,
                        "finish_reason": r.finish_reason,
                    }
                    for r in records
                ],
            }
        )

    def _gpu_json(self, gpu: SimulatedGpu) -> dict[str, Any]:
        # The simulator knows its lock, which NVML cannot read back: served beside the entry
        # for tests and curious readers, never relied on by jouletune's own clients.
        return {**gpu_entry(gpu), "sm_clock_lock_mhz": gpu.sm_clock_lock_mhz}


def _error(status: int, message: str) -> web.Response:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}, status=status
    )
