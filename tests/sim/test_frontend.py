"""How requests reach the scheduler: vLLM's API-server loop (processor sharing between taking
in requests and writing every stream's chunks), its renderer thread (one prompt at a time) and
asynchronous scheduling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from jouletune.gpu.simulated import SimulatedGpu, gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, Engine, EngineConfig, SimRequest
from jouletune.sim._engine import Step, StepListener
from jouletune.sim._frontend import ApiServer

REQUEST_S = 1.5e-3
CHUNK_S = 50e-6
LATENCY_S = 10e-3
RENDER_S = 1e-3


class _Log:
    def __init__(self) -> None:
        self.ready: dict[str, float] = {}
        self.out: dict[str, float] = {}

    def api(self) -> ApiServer[str, str]:
        return ApiServer(
            request_s=REQUEST_S,
            chunk_s=CHUNK_S,
            latency_s=LATENCY_S,
            render_s=lambda _request: RENDER_S,
            on_ready=self.ready.__setitem__,
            on_output=self.out.__setitem__,
        )


def test_an_idle_api_server_takes_a_request_in_and_writes_a_step_at_their_own_cost() -> None:
    log = _Log()
    api = log.api()
    api.submit("r", 1.0)
    api.output("step", 100, 2.0)
    api.advance(10.0)
    # the request: its own loop time, its rendering, then the fixed way to the engine core
    assert log.ready["r"] == pytest.approx(1.0 + REQUEST_S + RENDER_S + LATENCY_S)
    # a step's 100 chunks: 100 chunk times of the loop
    assert log.out["step"] == pytest.approx(2.0 + 100 * CHUNK_S)
    assert api.work_s == pytest.approx(REQUEST_S + 100 * CHUNK_S)
    assert len(api) == 0 and api.next_event_s() is None


def test_the_loop_is_shared_so_a_request_waits_for_every_streams_chunks() -> None:
    log = _Log()
    api = log.api()
    # 255 streams' chunks and one new request arrive together: 256 jobs share the loop
    api.output("step", 255, 0.0)
    api.submit("r", 0.0)
    api.advance(1.0)
    # each chunk needs 50 us: all 256 jobs get it after 256 x 50 us, the chunks are done
    assert log.out["step"] == pytest.approx(256 * CHUNK_S)
    # the request then has the loop alone: the work is conserved, it ends with all of it
    assert log.ready["r"] == pytest.approx(255 * CHUNK_S + REQUEST_S + RENDER_S + LATENCY_S)


def test_a_burst_is_taken_in_together_then_rendered_one_after_another() -> None:
    log = _Log()
    api = log.api()
    for i in range(8):
        api.submit(f"r{i}", 0.0)
    api.advance(1.0)
    # processor sharing: 8 equal jobs that arrive together leave the loop together; the one
    # renderer thread then takes them in the order they came, one render time apart
    loop_done = 8 * REQUEST_S
    assert [log.ready[f"r{i}"] for i in range(8)] == pytest.approx(
        [loop_done + (i + 1) * RENDER_S + LATENCY_S for i in range(8)]
    )


def test_the_renderer_is_not_slowed_by_the_loop_and_waits_only_for_its_queue() -> None:
    log = _Log()
    api = log.api()
    api.submit("a", 0.0)
    api.submit("b", 0.5)  # long after a's rendering: b renders at once
    api.output("step", 1000, 0.5 + REQUEST_S)  # the loop busy as b's rendering starts
    api.advance(10.0)
    assert log.ready["a"] == pytest.approx(REQUEST_S + RENDER_S + LATENCY_S)
    assert log.ready["b"] == pytest.approx(0.5 + REQUEST_S + RENDER_S + LATENCY_S)


def test_work_is_served_only_up_to_the_horizon() -> None:
    log = _Log()
    api = log.api()
    api.submit("early", 0.0)
    api.submit("late", 5.0)
    api.advance(1.0)
    assert set(log.ready) == {"early"}
    assert len(api) == 1 and api.next_event_s() == 5.0  # "late", not yet arrived
    api.advance(6.0)
    assert set(log.ready) == {"early", "late"}


def _config(*, servers: int = 1, **perf: float) -> EngineConfig:
    return EngineConfig(
        arch=model_arch("meta-llama/Llama-3.1-8B-Instruct"),
        gpu=gpu_model("h100-80gb"),
        tensor_parallel_size=1,
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        max_model_len=4096,
        gpu_memory_utilization=0.92,
        perf=replace(DEFAULT_PERF, **perf),
        api_server_count=servers,
    )


def _no_api_costs() -> EngineConfig:
    return _config(api_request_s=0.0, api_chunk_s=0.0, frontend_s=0.0, render_s_per_token=0.0)


class _Times(StepListener):
    def __init__(self) -> None:
        self.first: dict[str, float] = {}

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        self.first.setdefault(req.request_id, t_s)


def _engine(
    config: EngineConfig,
    streams: int,
    times: _Times,
    on_deliver: Callable[[list[tuple[SimRequest, bool]], float], None] | None = None,
) -> Engine:
    """An engine with `streams` requests of 512 prompt tokens that arrive at 0 and then
    decode for a long time."""
    engine = Engine(
        config=config,
        gpus=[SimulatedGpu(model=config.gpu, index=0, clock=lambda: 0.0)],
        on_deliver=on_deliver,
    )
    for i in range(streams):
        engine.add(
            SimRequest(
                request_id=f"s{i}", prompt_tokens=512, max_tokens=1500, arrival_s=0.0,
                listener=times,
            )
        )  # fmt: skip
    return engine


def _run_until(engine: Engine, done: Callable[[], bool], *, limit: int = 100_000) -> list[Step]:
    steps: list[Step] = []
    t_s = 0.0
    while not done() and len(steps) < limit:
        step = engine.begin_step(t_s)
        if step is None:
            ready_s = engine.next_ready_s()  # an idle engine: the API server catches up
            if ready_s is None:
                break
            t_s = max(t_s, ready_s)
            continue
        engine.finish_step(step)
        steps.append(step)
        t_s = step.end_s
    return steps


def _probe(streams: int, *, servers: int = 1, **perf: float) -> tuple[float, list[Step]]:
    """TTFT of one 64-token request sent 5 s into a run of `streams` decoding streams (their
    prompts are all prefilled by then), and the steps up to its first token."""
    engine = _engine(_config(servers=servers, **perf), streams, times := _Times())
    probe = SimRequest(
        request_id="probe", prompt_tokens=64, max_tokens=1, arrival_s=5.0, listener=times
    )
    engine.add(probe)
    steps = _run_until(engine, lambda: "probe" in times.first)
    return times.first["probe"] - probe.arrival_s, steps


def test_alone_a_request_pays_intake_rendering_the_way_in_one_step_and_one_chunk() -> None:
    ttft, steps = _probe(0)
    perf = DEFAULT_PERF
    prefill = steps[-1]
    render_s = perf.render_s_per_token * 64
    intake_s = perf.api_request_s + render_s + perf.frontend_s
    assert ttft == pytest.approx(intake_s + (prefill.end_s - prefill.start_s) + perf.api_chunk_s)


def test_ttft_grows_with_the_number_of_running_streams() -> None:
    ttft = {n: _probe(n)[0] for n in (0, 32, 128, 256)}
    assert ttft[0] < ttft[32] < ttft[128] < ttft[256]
    # Among n streams the first token leaves the loop with the n other chunks of its step.
    for n in (32, 128, 256):
        assert ttft[n] - ttft[0] > n * DEFAULT_PERF.api_chunk_s


def test_the_api_servers_share_of_ttft_grows_with_the_streams_it_writes_for() -> None:
    without = {n: _probe(n, api_request_s=0.0, api_chunk_s=0.0)[0] for n in (32, 256)}
    with_costs = {n: _probe(n)[0] for n in (32, 256)}
    assert with_costs[256] - without[256] > with_costs[32] - without[32] > 0


def test_more_api_server_processes_share_the_streams_between_them() -> None:
    # --api-server-count 4: each loop takes in and writes for a quarter of the streams
    assert _probe(256, servers=4)[0] < _probe(256)[0]


def test_a_request_reaching_the_scheduler_mid_step_waits_for_the_step_after_next() -> None:
    # No API-server cost: the request is at the scheduler the instant it arrives.
    engine = _engine(_no_api_costs(), 64, times := _Times())
    steps = _run_until(engine, lambda: False, limit=10)  # 64 streams decoding back to back
    running = engine.begin_step(steps[-1].end_s)  # step k, in flight
    assert running is not None
    probe = SimRequest(
        request_id="probe", prompt_tokens=64, max_tokens=1,
        arrival_s=(running.start_s + running.end_s) / 2, listener=times,
    )  # fmt: skip
    engine.add(probe)
    engine.finish_step(running)
    following = engine.begin_step(running.end_s)  # step k+1: scheduled when step k started
    assert following is not None and probe not in following.newly_scheduled
    engine.finish_step(following)
    after = engine.begin_step(following.end_s)  # step k+2: scheduled when step k+1 started
    assert after is not None and probe in after.newly_scheduled


@pytest.mark.parametrize("prompt_tokens", [64, 1024])
def test_a_step_too_large_for_a_cuda_graph_holds_back_the_tokens_before_it(
    prompt_tokens: int,
) -> None:
    # 64 decoding streams on a server of 1024 sequences: vLLM captures CUDA graphs up to 512
    # tokens, so a step that also prefills 1024 prompt tokens is launched kernel by kernel.
    delivered: list[float] = []
    config = _no_api_costs()
    engine = _engine(config, 64, _Times(), lambda _out, t_s: delivered.append(t_s))
    steps = _run_until(engine, lambda: False, limit=10)
    running = engine.begin_step(steps[-1].end_s)  # step k, in flight
    assert running is not None
    engine.add(SimRequest(request_id="p", prompt_tokens=prompt_tokens, max_tokens=1,
                          arrival_s=running.start_s))  # fmt: skip
    engine.finish_step(running)
    following = engine.begin_step(running.end_s)  # step k+1, with the new prompt
    assert following is not None and following.start_s == running.end_s
    engine.advance_frontend(following.start_s + 1.0)
    perf = config.perf
    launch_s = (
        perf.eager_launch_s
        + perf.eager_launch_per_token_s * prompt_tokens
        + perf.eager_launch_per_seq_s * 64
    )
    # the GPU runs the step's kernels as they are launched; step k's tokens wait for the launch
    expected_s = running.end_s if prompt_tokens == 64 else steps[-1].end_s + launch_s
    assert expected_s > running.end_s or prompt_tokens == 64
    assert delivered[-1] == pytest.approx(expected_s)


def test_a_request_reaching_the_scheduler_during_a_long_launch_is_in_the_next_step() -> None:
    # vLLM's engine core schedules step k+2 once it has launched step k+1: after a step too
    # large for a CUDA graph, whatever arrived during that launch is in the very next step.
    engine = _engine(_no_api_costs(), 64, times := _Times())
    steps = _run_until(engine, lambda: False, limit=10)
    running = engine.begin_step(steps[-1].end_s)  # step k, in flight
    assert running is not None
    engine.add(SimRequest(request_id="p", prompt_tokens=1024, max_tokens=1,
                          arrival_s=running.start_s))  # fmt: skip
    engine.finish_step(running)
    following = engine.begin_step(running.end_s)  # step k+1: prefills p, launched eagerly
    assert following is not None and following.newly_scheduled
    perf = DEFAULT_PERF
    launched_s = steps[-1].end_s + (
        perf.eager_launch_s
        + perf.eager_launch_per_token_s * 1024
        + perf.eager_launch_per_seq_s * 64
    )
    probe = SimRequest(
        request_id="probe", prompt_tokens=64, max_tokens=1,
        arrival_s=(following.start_s + launched_s) / 2, listener=times,
    )  # fmt: skip
    assert following.start_s < probe.arrival_s < launched_s  # on the GPU, still being launched
    engine.add(probe)
    engine.finish_step(following)
    after = engine.begin_step(following.end_s)  # step k+2
    assert after is not None and probe in after.newly_scheduled


def _idle_launch_s(prompt_tokens: int) -> float:
    perf = DEFAULT_PERF
    return perf.eager_launch_s + perf.eager_launch_per_token_s * prompt_tokens


def test_an_idle_engine_launches_a_large_step_before_the_gpu_can_finish_it() -> None:
    # 600 tokens take the GPU ~8 ms; vLLM's host needs ~16 ms to launch them kernel by kernel
    engine = _engine(_no_api_costs(), 0, times := _Times())
    engine.add(SimRequest(request_id="p", prompt_tokens=600, max_tokens=1, arrival_s=1.0,
                          listener=times))  # fmt: skip
    (step,) = _run_until(engine, lambda: "p" in times.first)
    assert step.end_s - step.start_s < _idle_launch_s(600)  # the GPU alone would be sooner
    assert step.end_s == pytest.approx(1.0 + _idle_launch_s(600))
    assert times.first["p"] == step.end_s


def test_a_burst_reaching_an_idle_engine_during_a_launch_shares_the_next_step() -> None:
    # vLLM at 8 streams: the first of a returning wave is prefilled alone, and the other
    # seven, which arrive while that step is being launched, together in the next one.
    engine = _engine(_no_api_costs(), 0, times := _Times())
    engine.add(SimRequest(request_id="first", prompt_tokens=1024, max_tokens=4, arrival_s=1.0,
                          listener=times))  # fmt: skip
    alone = engine.begin_step(1.0)
    assert alone is not None and [r.request_id for r in alone.newly_scheduled] == ["first"]
    for i in range(7):  # 1 ms apart, all before the launch ends
        engine.add(SimRequest(request_id=f"r{i}", prompt_tokens=1024, max_tokens=4,
                              arrival_s=1.0 + (i + 1) * 1e-3, listener=times))  # fmt: skip
    assert _idle_launch_s(1024) > 7e-3  # the last arrives before the launch ends
    engine.finish_step(alone)
    together = engine.begin_step(alone.end_s)
    assert together is not None
    assert sorted(r.request_id for r in together.newly_scheduled) == [f"r{i}" for i in range(7)]
    # the host launches that step after the first one, and only then hands out its token
    perf = DEFAULT_PERF
    second_launch_s = _idle_launch_s(7 * 1024) + perf.eager_launch_per_seq_s
    engine.advance_frontend(together.end_s)
    assert 1.0 + _idle_launch_s(1024) + second_launch_s > alone.end_s
    assert times.first["first"] == pytest.approx(1.0 + _idle_launch_s(1024) + second_launch_s)
