"""The forward model: the simulator's prediction of a measured closed loop, in simulated time.

A replay runs the sim-server's own engine and simulated GPU (`jouletune.sim.ClosedLoopReplay`,
a virtual clock) with a candidate set of parameters, sends the measured run's requests as
`jouletune bench` did (N streams on one queue, no send after the run's duration), and
measures the result with the load generator's own rules (`steady_state_window`,
`compute_metrics`) and the simulated GPUs' exact energy over that window. So the fit compares
like with like, and a replay of a 30 s run takes about a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jouletune.calibrate._plan import ServerSettings, Workload
from jouletune.gpu.simulated import GpuModel
from jouletune.loadgen import (
    NoSteadyStateError,
    RequestRecord,
    Window,
    compute_metrics,
    steady_state_window,
)
from jouletune.models import ModelArch
from jouletune.profile import ProfileFigures, ProfileParameters
from jouletune.sim import (
    DEFAULT_PERF,
    ClientRequest,
    ClosedLoopReplay,
    EngineConfig,
    TracedRequest,
    apply_profile,
)

__all__ = ["SimSetup", "replay_run", "simulate_closed_loop"]

# A replay predicts a point it did not measure from this many requests per stream, at most:
# enough for the closed loop to pass its ramp-up and hold a steady state for the duration.
_REQUESTS_PER_STREAM = 64


@dataclass(frozen=True, kw_only=True)
class SimSetup:
    """What the simulator replays on: the model, the GPU's datasheet entry, the server.

    Attributes:
        arch: the model's architecture.
        gpu: the catalog entry whose datasheet figures a profile's parameters complete.
        server: the engine settings.
    """

    arch: ModelArch
    gpu: GpuModel
    server: ServerSettings

    def engine_config(self, params: ProfileParameters) -> EngineConfig:
        """The engine model with `params` in place of the built-in constants."""
        gpu, perf = apply_profile(self.gpu, DEFAULT_PERF, params)
        return EngineConfig(
            arch=self.arch,
            gpu=gpu,
            tensor_parallel_size=self.server.tensor_parallel_size,
            max_num_seqs=self.server.max_num_seqs,
            max_num_batched_tokens=self.server.max_num_batched_tokens,
            max_model_len=self.server.max_model_len,
            gpu_memory_utilization=self.server.gpu_memory_utilization,
            perf=perf,
            enable_prefix_caching=self.server.enable_prefix_caching,
            api_server_count=self.server.api_server_count,
        )


def replay_run(
    setup: SimSetup,
    params: ProfileParameters,
    *,
    requests: Sequence[tuple[int, int]],
    concurrency: int,
    duration_s: float,
    power_limit_w: float | None,
    sm_clock_lock_mhz: int | None = None,
    turnarounds_s: Sequence[float] = (),
) -> ProfileFigures | None:
    """The simulator's figures for a closed loop of `requests` (prompt, output tokens) in
    send order, each GPU under `power_limit_w` and `sm_clock_lock_mhz` (None: as found);
    None when the replay has no steady state.

    `turnarounds_s` are the client's turnarounds in the order its streams were freed: the
    k-th stream to finish a request sends its next one that much later
    (`ClosedLoopReplay.run`), so a replay cycles as the measured closed loop did.
    """
    config = setup.engine_config(params)
    replay = ClosedLoopReplay(
        config, power_limit_w=power_limit_w, sm_clock_lock_mhz=sm_clock_lock_mhz
    )
    traced = replay.run(
        [ClientRequest(prompt_tokens=p, max_tokens=o) for p, o in requests],
        concurrency=concurrency,
        duration_s=duration_s,
        turnarounds_s=turnarounds_s,
    )
    records = [_record(t) for t in traced]
    try:
        window = steady_state_window(records, max_concurrency=concurrency, closed_loop=True)
    except NoSteadyStateError:
        return None
    return _figures(replay, records, window)


def simulate_closed_loop(
    setup: SimSetup,
    params: ProfileParameters,
    *,
    concurrency: int,
    workload: Workload,
    duration_s: float,
    power_limit_w: float | None = None,
    sm_clock_lock_mhz: int | None = None,
) -> ProfileFigures | None:
    """The simulator's prediction for a closed loop nobody measured (as `jouletune bench
    --max-concurrency N --duration D` would see it, client turnaround aside)."""
    count = concurrency * _REQUESTS_PER_STREAM
    return replay_run(
        setup,
        params,
        requests=[(workload.input_len, workload.output_len)] * count,
        concurrency=concurrency,
        duration_s=duration_s,
        power_limit_w=power_limit_w,
        sm_clock_lock_mhz=sm_clock_lock_mhz,
    )


def _record(traced: TracedRequest) -> RequestRecord:
    return RequestRecord(
        index=traced.index,
        request_id=f"r{traced.index}",
        success=bool(traced.token_times_s),
        error=None if traced.token_times_s else "no token",
        send_s=traced.send_s,
        end_s=traced.token_times_s[-1] if traced.token_times_s else traced.send_s,
        chunk_times_s=traced.token_times_s,
        output_tokens=len(traced.token_times_s),
        prompt_tokens=traced.prompt_tokens,
        expected_output_len=len(traced.token_times_s),
    )


def _figures(
    replay: ClosedLoopReplay, records: list[RequestRecord], window: Window
) -> ProfileFigures | None:
    """The figures over `window`, measured as `jouletune bench` measures them."""
    metrics = compute_metrics(records, window)
    tokens = metrics.window_output_tokens
    if not tokens:
        return None
    start_s, end_s, duration_s = window.start_s, window.end_s, window.duration_s
    energy_j = replay.energy_j(start_s, end_s)
    busy_s = clock = batch = 0.0
    for step in replay.steps:
        overlap_s = min(step.end_s, end_s) - max(step.start_s, start_s)
        if overlap_s > 0:
            busy_s += overlap_s
            clock += step.outcome.sm_clock_hz * overlap_s
            batch += step.batch.num_seqs * overlap_s
    return ProfileFigures(
        j_per_output_token=energy_j / tokens,
        itl_ms_p50=metrics.itl_ms.p50,
        itl_ms_p99=metrics.itl_ms.p99,
        ttft_ms_p50=metrics.ttft_ms.p50,
        avg_power_w=energy_j / duration_s / len(replay.gpus),
        sm_clock_mhz=clock / busy_s / 1e6 if busy_s else None,
        avg_batch_size=batch / duration_s,
        output_tok_s=tokens / duration_s,
    )
