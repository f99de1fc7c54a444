"""The steady-state window: the part of a run without ramp-up and drain (ML.ENERGY method).

The rule, from the request records alone (client clock, perf_counter seconds):

1. Plateau level L, the in-flight count the run settles at. Closed loop (request rate inf):
   L = min(max_concurrency, requests sent). Open loop (finite rate): L = min(max_concurrency,
   the time-weighted median of the client's in-flight count between the first and the last
   send).
2. Plateau moment: the first time the in-flight count reaches L. The streams in flight then
   are "every concurrent stream"; requests sent after it are the steady-state cohort (their
   TTFT does not include the ramp-up's burst of arrivals).
3. Start = the later of (a) the first request end (at least one request has finished, so the
   server mixes prefill and decode as it will for the rest of the run) and (b) the first
   token of every stream in flight at the plateau moment (their prefill burst is over).
4. End = the first request end after the last send: from then on a stream has run out of work
   (closed loop) or no new arrival replaces a finished request (open loop), so the batch
   drains. A run cut short (`--duration`, a lost server) ends the same way at its last send.
5. Both edges then move forward into the quiet gap after the burst of chunks they fall in: an
   engine step emits one chunk for every running stream at once, so rules 3 and 4 put each
   edge at the start of a burst. The edge moves to the middle of the longest gap between chunk
   arrivals within one step period (the median ITL) after it, so every step's tokens lie wholly
   inside or outside the window, whatever the delivery delay within a burst.
6. No window (start >= end) when the run is too short for a steady state; the caller marks
   the result invalid with the reason.

When more requests are in flight than the server runs (vLLM's default `vllm bench serve`: all
prompts at once, no concurrency cap) the steady state is the server's, read from its own
gauges as the ML.ENERGY benchmark defines it: the batch is full while the queue lasts.

7. Server-queue rule, for closed-loop runs that kept more requests in flight than the server
   ever ran, so that requests queued (`vllm:num_requests_waiting` > 0; a prefill budget
   alone may make requests wait briefly, which is not a queue): the batch B is the most
   requests running while some waited. Start = the later of the first scrape with B running
   and some waiting, and the moment B requests had their first token (the first batch's
   prefill is over). End = the last scrape with requests waiting: after it the queue can no
   longer refill the batch and it drains. Both edges then move into the quiet gap after
   their burst (rule 5). The cohort whose latencies are reported is every request that ended
   inside the window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from jouletune.loadgen._records import RequestRecord, Window
from jouletune.loadgen._telemetry import ServerScrape

__all__ = ["NoSteadyStateError", "steady_state_window"]

# Requests waiting in this many server scrapes (0.25 s apart) make a queue, not a blip.
_MIN_QUEUED_SCRAPES = 4


class NoSteadyStateError(ValueError):
    """The run has no steady-state window; the message says why, in one line."""


def steady_state_window(
    records: Sequence[RequestRecord],
    *,
    max_concurrency: int | None,
    closed_loop: bool,
    server_scrapes: Sequence[ServerScrape] = (),
) -> Window:
    """Apply the module's rule to a run's records (and, for rule 7, the server's gauges).

    Args:
        records: every request that was sent in the measured run.
        max_concurrency: the client's concurrency cap; None for no cap.
        closed_loop: True when requests were sent as fast as the cap allows (rate inf).
        server_scrapes: the server's running/waiting gauges during the run, in time order.

    Raises:
        NoSteadyStateError: no request was sent, or the run never reached a steady state.
    """
    if not records:
        raise NoSteadyStateError("no request was sent")
    queued = [s for s in server_scrapes if s.waiting and s.running]
    if closed_loop and len(queued) >= _MIN_QUEUED_SCRAPES:
        batch = max(int(s.running or 0) for s in server_scrapes)
        if _max_in_flight(records) > batch:  # more sent than the server runs: a real queue
            return _server_queue_window(records, queued)
    by_send = sorted(records, key=lambda r: r.send_s)
    cap = max_concurrency if max_concurrency is not None else len(by_send)
    level = min(cap, len(by_send) if closed_loop else _median_in_flight(by_send))
    plateau_s = _first_time_at_level(by_send, level)
    at_plateau = [r for r in by_send if r.send_s <= plateau_s < r.end_s]
    first_end_s = min(r.end_s for r in by_send)
    # A stream that failed before its first token counts as "served" once it ended.
    all_started_s = max(
        (r.first_token_s if r.first_token_s is not None else r.end_s for r in at_plateau),
        default=plateau_s,
    )
    start_s = max(first_end_s, all_started_s)
    last_send_s = by_send[-1].send_s
    end_s = min((r.end_s for r in by_send if r.end_s > last_send_s), default=last_send_s)
    chunks_s = _chunk_times(records)
    step_s = _median_gap_s(records)
    start_s = _after_burst(chunks_s, start_s, step_s)
    end_s = _after_burst(chunks_s, end_s, step_s)
    if not end_s > start_s:
        raise NoSteadyStateError(
            f"no steady state: the first stream ran out of work {end_s - by_send[0].send_s:.3f}s"
            f" into the run, before every stream had its first token and one request had"
            f" finished ({start_s - by_send[0].send_s:.3f}s); send more requests than"
            f" --max-concurrency ({len(by_send)} sent, {level} in flight)"
        )
    return Window(start_s=start_s, end_s=end_s, plateau_in_flight=level, plateau_s=plateau_s)


def _server_queue_window(
    records: Sequence[RequestRecord], queued: Sequence[ServerScrape]
) -> Window:
    """Rule 7: the server ran a full batch while requests waited."""
    batch = max(int(s.running or 0) for s in queued)
    full_s = next(s.t_s for s in queued if (s.running or 0) >= batch)
    first_tokens = sorted(r.first_token_s for r in records if r.first_token_s is not None)
    prefilled_s = first_tokens[batch - 1] if len(first_tokens) >= batch else math.inf
    chunks_s = _chunk_times(records)
    step_s = _median_gap_s(records)
    start_s = _after_burst(chunks_s, max(full_s, prefilled_s), step_s)
    end_s = _after_burst(chunks_s, queued[-1].t_s, step_s)
    if not end_s > start_s:
        raise NoSteadyStateError(
            f"no steady state: the server's queue of waiting requests emptied before its batch"
            f" of {batch} had its first tokens; send more requests (--num-prompts)"
        )
    plateau_s = min(r.send_s for r in records)
    return Window(
        start_s=start_s, end_s=end_s, plateau_in_flight=batch, plateau_s=plateau_s,
        rule="server-queue",
    )  # fmt: skip


def _max_in_flight(records: Sequence[RequestRecord]) -> int:
    in_flight = peak = 0
    for _, delta in _events(records):
        in_flight += delta
        peak = max(peak, in_flight)
    return peak


def _events(records: Sequence[RequestRecord]) -> list[tuple[float, int]]:
    # Ends sort before sends at the same instant: intervals are half-open [send, end).
    events = [(r.send_s, 1) for r in records] + [(r.end_s, -1) for r in records]
    events.sort()
    return events


def _first_time_at_level(records: Sequence[RequestRecord], level: int) -> float:
    in_flight = 0
    for t_s, delta in _events(records):
        in_flight += delta
        if in_flight >= level:
            return t_s
    raise AssertionError(f"in-flight count never reached {level=}")  # level <= its maximum


def _median_in_flight(records: Sequence[RequestRecord]) -> int:
    """Time-weighted median of the in-flight count between the first and the last send."""
    first_s, last_s = records[0].send_s, records[-1].send_s
    if last_s <= first_s:
        return sum(1 for r in records if r.send_s == first_s)
    time_at: dict[int, float] = {}
    in_flight, prev_s = 0, first_s
    for t_s, delta in _events(records):
        clipped_s = min(max(t_s, first_s), last_s)
        time_at[in_flight] = time_at.get(in_flight, 0.0) + (clipped_s - prev_s)
        prev_s = clipped_s
        in_flight += delta
    half_s, acc_s = (last_s - first_s) / 2, 0.0
    for level in sorted(time_at):
        acc_s += time_at[level]
        if acc_s >= half_s:
            return max(level, 1)
    return max(1, math.ceil(max(time_at)))


def _chunk_times(records: Sequence[RequestRecord]) -> npt.NDArray[np.float64]:
    arrays = [np.asarray(r.chunk_times_s, dtype=np.float64) for r in records if r.chunk_times_s]
    return np.sort(np.concatenate(arrays)) if arrays else np.empty(0)


def _median_gap_s(records: Sequence[RequestRecord]) -> float:
    gaps = [np.diff(np.asarray(r.chunk_times_s, dtype=np.float64)) for r in records]
    pooled = np.concatenate(gaps) if gaps else np.empty(0)
    pooled = pooled[pooled > 0]
    return float(np.median(pooled)) if pooled.size else 0.0


def _after_burst(chunks_s: npt.NDArray[np.float64], edge_s: float, step_s: float) -> float:
    """The middle of the longest gap between chunk arrivals in [edge, edge + step], where one
    gap may end after that span; `edge_s` itself when there is no such gap."""
    lo = int(np.searchsorted(chunks_s, edge_s, side="left"))
    hi = int(np.searchsorted(chunks_s, edge_s + step_s, side="right"))
    span = chunks_s[lo : min(hi + 1, chunks_s.size)]
    if step_s <= 0 or span.size < 2:
        return edge_s
    gaps = np.diff(span)
    i = int(np.argmax(gaps))
    return float(span[i] + gaps[i] / 2)
