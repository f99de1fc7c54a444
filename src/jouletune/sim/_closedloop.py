"""The engine model in simulated time under a closed-loop load, measured like the calibration.

`run_closed_loop` plays C clients that each send the next streaming completion (fixed prompt
and output length, `ignore_eos`) the moment the last one ends, exactly as the H100 sweep in
../shared/calibration was driven, and measures the same figures over the same window: 25 s
of steady state starting once every client had its first token and one request had
finished. It runs the very `Engine` and `SimulatedGpu` the sim-server runs, but jumps a
virtual clock from step to step, so a 25 s window takes well under a second.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from jouletune.gpu.simulated import SimulatedGpu
from jouletune.sim._engine import Engine, EngineConfig, SimRequest, Step, StepListener

__all__ = [
    "ClientRequest",
    "ClosedLoopReplay",
    "ClosedLoopResult",
    "TracedRequest",
    "run_closed_loop",
]

_T0_S = 1_000_000.0  # virtual unix time of the run's start; any value works


@dataclass(frozen=True, kw_only=True)
class ClosedLoopResult:
    """Figures of one closed-loop run over its steady-state window.

    Attributes:
        concurrency: number of clients.
        window_s: length of the measurement window, seconds.
        output_tokens: tokens emitted inside the window.
        output_tok_s: output tokens per second.
        itl_ms_p50, itl_ms_p90, itl_ms_p99: inter-token gaps ending inside the window, ms.
        ttft_ms_p50, ttft_ms_p90: time to first token of requests whose first token came
            inside the window, ms.
        energy_j: energy of all GPUs over the window, joules.
        power_w: average power per GPU over the window, watts.
        sm_clock_mhz_mean: time-weighted SM clock while steps ran, MHz.
        j_per_output_token: energy_j / output_tokens.
        avg_batch_size: time-weighted number of running requests.
    """

    concurrency: int
    window_s: float
    output_tokens: int
    output_tok_s: float
    itl_ms_p50: float
    itl_ms_p90: float
    itl_ms_p99: float
    ttft_ms_p50: float
    ttft_ms_p90: float
    energy_j: float
    power_w: float
    sm_clock_mhz_mean: float
    j_per_output_token: float
    avg_batch_size: float


class _Client(StepListener):
    def __init__(self, loop: _Loop, index: int) -> None:
        self.loop = loop
        self.index = index

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        assert req.token_times_s is not None
        req.token_times_s.append(t_s)
        self.loop.started.add(self.index)

    def on_finish(self, req: SimRequest, t_s: float) -> None:
        self.loop.done.append(req)
        self.loop.send(self, t_s)


class _Loop:
    def __init__(self, engine: Engine, *, input_len: int, output_len: int) -> None:
        self.engine = engine
        self.input_len = input_len
        self.output_len = output_len
        self.done: list[SimRequest] = []
        self.started: set[int] = set()
        self.sent = 0

    def send(self, client: _Client, t_s: float) -> None:
        self.sent += 1
        req = SimRequest(
            request_id=f"c{client.index}-{self.sent}",
            prompt_tokens=self.input_len,
            max_tokens=self.output_len,
            arrival_s=t_s,
            listener=client,
        )
        req.token_times_s = []
        self.engine.add(req)


def run_closed_loop(
    config: EngineConfig,
    *,
    concurrency: int,
    input_len: int,
    output_len: int,
    window_s: float = 25.0,
    power_limit_w: float | None = None,
    sm_clock_lock_mhz: int | None = None,
) -> ClosedLoopResult:
    """Drive `config`'s engine with `concurrency` closed-loop clients in simulated time,
    each GPU under `power_limit_w` (None: its default) and its SM clock locked at
    `sm_clock_lock_mhz` (None: unlocked)."""
    now = [_T0_S]
    gpus = [
        SimulatedGpu(model=config.gpu, index=i, clock=lambda: now[0])
        for i in range(config.tensor_parallel_size)
    ]
    for gpu in gpus:
        gpu.set_loaded(True, at_s=_T0_S)
        if power_limit_w is not None:
            gpu.set_power_limit_w(power_limit_w)
        gpu.set_sm_clock_lock_mhz(sm_clock_lock_mhz)
    steps: list[Step] = []
    engine = Engine(config=config, gpus=gpus, on_step=steps.append)
    loop = _Loop(engine, input_len=input_len, output_len=output_len)
    clients = [_Client(loop, i) for i in range(concurrency)]
    for client in clients:
        loop.send(client, _T0_S)
    t_s = _T0_S
    window_start_s: float | None = None
    while window_start_s is None or t_s < window_start_s + window_s:
        step = engine.begin_step(t_s)
        if step is None:
            nxt = engine.next_ready_s()
            assert nxt is not None, "closed loop ran dry"
            t_s = max(t_s, nxt)
            continue
        now[0] = step.end_s
        engine.finish_step(step)
        t_s = step.end_s
        if window_start_s is None and loop.done and len(loop.started) == concurrency:
            window_start_s = t_s
    assert window_start_s is not None
    return _measure(engine, gpus, loop, steps, concurrency, window_start_s, window_s)


def _measure(
    engine: Engine,
    gpus: list[SimulatedGpu],
    loop: _Loop,
    steps: list[Step],
    concurrency: int,
    start_s: float,
    window_s: float,
) -> ClosedLoopResult:
    end_s = start_s + window_s
    tokens = engine.tokens_emitted_by(end_s) - engine.tokens_emitted_by(start_s)
    energy_j = sum(g.energy_between(start_s, end_s) for g in gpus)
    reqs = loop.done + list(engine.running)
    itls: list[float] = []
    ttfts: list[float] = []
    for req in reqs:
        times = req.token_times_s or []
        for a, b in itertools.pairwise(times):
            if start_s < b <= end_s:
                itls.append(b - a)
        if times and start_s < times[0] <= end_s:
            ttfts.append(times[0] - req.arrival_s)
    in_window = [s for s in steps if s.end_s > start_s and s.start_s < end_s]
    busy = sum(min(s.end_s, end_s) - max(s.start_s, start_s) for s in in_window)
    clock = sum(
        s.outcome.sm_clock_hz * (min(s.end_s, end_s) - max(s.start_s, start_s)) for s in in_window
    )
    batch = sum(
        s.batch.num_seqs * (min(s.end_s, end_s) - max(s.start_s, start_s)) for s in in_window
    )
    return ClosedLoopResult(
        concurrency=concurrency,
        window_s=window_s,
        output_tokens=tokens,
        output_tok_s=tokens / window_s,
        itl_ms_p50=_pct(itls, 50),
        itl_ms_p90=_pct(itls, 90),
        itl_ms_p99=_pct(itls, 99),
        ttft_ms_p50=_pct(ttfts, 50),
        ttft_ms_p90=_pct(ttfts, 90),
        energy_j=energy_j,
        power_w=energy_j / window_s / len(gpus),
        sm_clock_mhz_mean=clock / busy / 1e6 if busy else gpus[0].model.max_sm_clock_hz / 1e6,
        j_per_output_token=energy_j / tokens if tokens else float("nan"),
        avg_batch_size=batch / window_s,
    )


def _pct(values_s: list[float], q: int) -> float:
    if not values_s:
        return float("nan")
    if len(values_s) == 1:
        return values_s[0] * 1e3
    return statistics.quantiles(values_s, n=100, method="inclusive")[q - 1] * 1e3


@dataclass(frozen=True, kw_only=True)
class ClientRequest:
    """One request a replayed client sends.

    Attributes:
        prompt_tokens: prompt length, tokens.
        max_tokens: output length, tokens (the simulator never stops early).
        block_hashes: chained hashes of the prompt's full 16-token blocks, for prefix
            caching (empty: the prompt shares nothing with any other).
    """

    prompt_tokens: int
    max_tokens: int
    block_hashes: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TracedRequest:
    """What the client saw of one replayed request (virtual clock, seconds).

    Attributes:
        index: position of the request in the workload.
        send_s: when the client sent it.
        token_times_s: when each output token reached the client (one chunk per token).
        prompt_tokens: prompt length, tokens.
    """

    index: int
    send_s: float
    token_times_s: tuple[float, ...]
    prompt_tokens: int


class _Stream(StepListener):
    """One closed-loop client stream: sends the next queued request when its last ends."""

    def __init__(self, replay: ClosedLoopReplay) -> None:
        self.replay = replay

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        assert req.token_times_s is not None
        req.token_times_s.append(t_s)

    def on_finish(self, req: SimRequest, t_s: float) -> None:
        self.replay._resend(self, t_s)


class ClosedLoopReplay:
    """One simulated server (engine and GPUs on a virtual clock) that closed-loop runs share.

    Runs on one replay follow each other on the same clock and the same KV cache, as bench
    runs against one `vllm serve` do, so a later workload can hit an earlier one's cached
    prefixes. `run` behaves like `jouletune bench --max-concurrency N --duration D`: N
    streams share one queue of requests, no stream sends after D seconds from the first
    send, and the run ends when the last request has finished.

    Args:
        config: the server settings.
        power_limit_w: each GPU's power limit; None for the GPU's default.
        sm_clock_lock_mhz: each GPU's SM clock lock; None: unlocked.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        power_limit_w: float | None = None,
        sm_clock_lock_mhz: int | None = None,
    ) -> None:
        self._clock_s = _T0_S
        self.gpus = [
            SimulatedGpu(model=config.gpu, index=i, clock=lambda: self._clock_s)
            for i in range(config.tensor_parallel_size)
        ]
        for gpu in self.gpus:
            gpu.set_loaded(True, at_s=_T0_S)
            if power_limit_w is not None:
                gpu.set_power_limit_w(power_limit_w)
            gpu.set_sm_clock_lock_mhz(sm_clock_lock_mhz)
        self.steps: list[Step] = []
        self.engine = Engine(config=config, gpus=self.gpus, on_step=self.steps.append)
        self._queue: list[tuple[int, ClientRequest]] = []
        self._stop_s = math.inf
        self._turnarounds_s: list[float] = []
        self._resends = 0
        self._sent: list[tuple[int, SimRequest]] = []

    @property
    def now_s(self) -> float:
        """The virtual clock, seconds."""
        return self._clock_s

    def run(
        self,
        requests: Sequence[ClientRequest],
        *,
        concurrency: int,
        duration_s: float,
        turnarounds_s: Sequence[float] = (),
    ) -> list[TracedRequest]:
        """Play `requests` with `concurrency` streams for `duration_s`; every sent request.

        `turnarounds_s[k]` is how long the stream freed k-th (in time) waits before it sends
        its next request, as a measured client took (the last value for later ones; none:
        at once): a real client's streams take turns, so a wave of requests ending together
        is resent spread out, not at one instant.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1: {concurrency=}")
        start_s = self._clock_s
        self._queue = list(enumerate(requests))
        self._queue.reverse()  # pop() from the end takes the next request in order
        self._stop_s = start_s + duration_s
        self._turnarounds_s = list(turnarounds_s)
        self._resends = 0
        self._sent = []
        for _ in range(min(concurrency, len(requests))):
            self._next(_Stream(self), start_s)
        t_s = start_s
        while self.engine.has_work():
            step = self.engine.begin_step(t_s)
            if step is None:
                nxt = self.engine.next_ready_s()
                if nxt is None:  # only the last tokens were left to write
                    assert not self.engine.has_work(), "work left but nothing pending"
                    break
                t_s = max(t_s, nxt)
                continue
            self._clock_s = step.end_s
            self.engine.finish_step(step)
            t_s = step.end_s
        # The run ends with its last chunk written, which may follow the last step.
        self._clock_s = max([t_s] + [r.last_token_s for _, r in self._sent if r.output_tokens])
        return [
            TracedRequest(
                index=i,
                send_s=req.arrival_s,
                token_times_s=tuple(req.token_times_s or ()),
                prompt_tokens=req.prompt_tokens,
            )
            for i, req in self._sent
        ]

    def energy_j(self, start_s: float, end_s: float) -> float:
        """Energy of all GPUs between two instants of the virtual clock, joules."""
        return sum(g.energy_between(start_s, end_s) for g in self.gpus)

    def _resend(self, stream: _Stream, t_s: float) -> None:
        """`stream`'s request ended at `t_s`: it sends the next after its turnaround."""
        gaps = self._turnarounds_s
        gap_s = gaps[min(self._resends, len(gaps) - 1)] if gaps else 0.0
        self._resends += 1
        self._next(stream, t_s + gap_s)

    def _next(self, stream: _Stream, t_s: float) -> None:
        if not self._queue or t_s >= self._stop_s:
            return
        index, spec = self._queue.pop()
        req = SimRequest(
            request_id=f"r{index}",
            prompt_tokens=spec.prompt_tokens,
            max_tokens=spec.max_tokens,
            arrival_s=t_s,
            listener=stream,
            block_hashes=spec.block_hashes,
        )
        req.token_times_s = []
        self._sent.append((index, req))
        self.engine.add(req)
