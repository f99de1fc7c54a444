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
import statistics
from dataclasses import dataclass

from jouletune.gpu.simulated import SimulatedGpu
from jouletune.sim._engine import Engine, EngineConfig, SimRequest, Step, StepListener

__all__ = ["ClosedLoopResult", "run_closed_loop"]

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
            ready_s=t_s + self.engine.config.perf.frontend_s,
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
) -> ClosedLoopResult:
    """Drive `config`'s engine with `concurrency` closed-loop clients in simulated time."""
    now = [_T0_S]
    gpus = [
        SimulatedGpu(model=config.gpu, index=i, clock=lambda: now[0])
        for i in range(config.tensor_parallel_size)
    ]
    for gpu in gpus:
        gpu.set_loaded(True, at_s=_T0_S)
        if power_limit_w is not None:
            gpu.set_power_limit_w(power_limit_w)
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
            t_s = nxt
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
