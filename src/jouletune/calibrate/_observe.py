"""What one measured point tells the fit: its figures, and what a replay of it needs.

`Observation.from_result` reads a `jouletune bench` result once (the one place that knows its
fields): the figures the fit compares (`ProfileFigures`) and the inputs of the simulator's
replay of the same run — every request's prompt and output tokens in send order, the
concurrency, the sending time, the power limit in force, and the client's turnarounds (the
time between a stream's last token and its next send, in the order the streams were freed,
which a replay waits before each resend so that a closed loop on the simulator cycles as the
measured one did).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from jouletune.calibrate._plan import PlanPoint
from jouletune.loadgen import BenchResult
from jouletune.profile import ProfileFigures

__all__ = ["FIGURES", "Observation", "figures_of"]

FIGURES = tuple(ProfileFigures.model_fields)
"""The figures a point has, in a fixed order."""


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One measured point.

    Attributes:
        point: what the plan asked for.
        result_file: the bench result's file name.
        concurrency: closed-loop streams.
        duration_s: how long the bench sent requests, seconds.
        requests: (prompt tokens, output tokens) of every request, in send order.
        power_limit_w: the limit in force during the window, W (None: unknown).
        turnarounds_s: time from a stream's last token to its next send, seconds, for the
            first, second, ... stream to be freed (in time).
        idle_w: power per GPU with the server idle, just before the run, W.
        measured: the figures the bench measured.
        lifetimes_in_window: the window's length in median request lifetimes (E2EL p50).
        invalid_reason: why the measurement does not count (None: it counts).
    """

    point: PlanPoint
    result_file: str
    concurrency: int
    duration_s: float
    requests: tuple[tuple[int, int], ...]
    power_limit_w: float | None
    turnarounds_s: tuple[float, ...]
    idle_w: float | None
    measured: ProfileFigures
    lifetimes_in_window: float | None
    invalid_reason: str | None

    @classmethod
    def from_result(cls, point: PlanPoint, result: BenchResult, *, result_file: str) -> Observation:
        """Read `result`, a bench run of `point` with per-request detail (`save_detailed`)."""
        gpus = max(len(result.gpus), 1)
        limits = [g.power_limit_w for g in result.gpus if g.power_limit_w is not None]
        return cls(
            point=point,
            result_file=result_file,
            concurrency=result.config.max_concurrency or point.concurrency,
            duration_s=result.config.duration_s or result.duration_s,
            requests=_requests(result, point),
            power_limit_w=min(limits) if limits else None,
            turnarounds_s=_turnarounds_s(result, point.concurrency),
            idle_w=None if result.idle_power_w is None else result.idle_power_w / gpus,
            measured=figures_of(result),
            lifetimes_in_window=_lifetimes(result),
            invalid_reason=_invalid(result),
        )


def figures_of(result: BenchResult) -> ProfileFigures:
    """The compared figures of a bench result (power per GPU, clock in MHz)."""
    gpus = max(len(result.gpus), 1)
    clocks = [g.sm_clock.mean for g in result.gpus if g.sm_clock is not None]
    return ProfileFigures(
        j_per_output_token=result.energy_per_output_token_j,
        itl_ms_p50=result.itl_ms.p50,
        itl_ms_p99=result.itl_ms.p99,
        ttft_ms_p50=result.ttft_ms.p50,
        avg_power_w=None if result.avg_power_w is None else result.avg_power_w / gpus,
        sm_clock_mhz=statistics.mean(clocks) / 1e6 if clocks else None,
        avg_batch_size=result.avg_batch_size,
        output_tok_s=result.output_token_throughput,
    )


def _requests(result: BenchResult, point: PlanPoint) -> tuple[tuple[int, int], ...]:
    """Every sent request's lengths in send order; the plan's lengths where the server did
    not count them (a failed request holds its place in the queue all the same)."""
    if not result.requests:
        sent = result.workload.sent
        return ((point.workload.input_len, point.workload.output_len),) * sent
    detail = sorted(result.requests, key=lambda r: r.index)
    return tuple(
        (
            r.prompt_tokens or point.workload.input_len,
            r.output_tokens or point.workload.output_len,
        )
        for r in detail
    )


def _turnarounds_s(result: BenchResult, concurrency: int) -> tuple[float, ...]:
    """The closed loop's turnarounds in the order its streams were freed: the k-th request
    to end (in time) frees the stream that sends request `concurrency + k` (streams take the
    next index). Clocks that read a send before its end count as no wait."""
    detail = sorted(result.requests or [], key=lambda r: r.index)
    ends = sorted(r.end_unix_s for r in detail)
    return tuple(
        max(detail[concurrency + k].send_unix_s - end, 0.0)
        for k, end in enumerate(ends)
        if concurrency + k < len(detail)
    )


def _lifetimes(result: BenchResult) -> float | None:
    e2el_ms = result.e2el_ms.p50
    if result.window is None or not e2el_ms:
        return None
    return result.window.duration_s * 1e3 / e2el_ms


def _invalid(result: BenchResult) -> str | None:
    if not result.valid:
        return result.invalid_reason or "invalid measurement"
    if result.partial:
        return "partial run (the server was lost)"
    if result.energy_per_output_token_j is None or result.itl_ms.p50 is None:
        return "no energy per token or ITL measured"
    return None
