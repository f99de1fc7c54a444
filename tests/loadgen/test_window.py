"""The steady-state window rule on hand-built runs."""

from __future__ import annotations

import numpy as np
import pytest

from jouletune.loadgen import NoSteadyStateError, RequestRecord, steady_state_window

STEP_S = 0.1  # the simulated engine emits one chunk per running stream every 0.1 s


def _rec(index: int, send_s: float, first_s: float, end_s: float) -> RequestRecord:
    """A stream with a chunk every engine step from `first_s` to `end_s` (step multiples);
    stream i's chunks arrive i ms after the step, as a client reads a burst in turn."""
    steps = np.arange(round(first_s / STEP_S), round(end_s / STEP_S) + 1) * STEP_S
    return RequestRecord(
        index=index,
        request_id=None,
        success=True,
        error=None,
        send_s=send_s,
        end_s=float(steps[-1]) + index * 1e-3,
        chunk_times_s=list(steps + index * 1e-3),
        output_tokens=len(steps),
        prompt_tokens=1,
        expected_output_len=len(steps),
    )


def test_closed_loop_starts_after_first_end_and_ends_when_first_stream_runs_dry() -> None:
    # Two streams. A and B start at 0; C takes A's slot when A ends (1.0), D takes B's when B
    # ends (step 1.1, read at 1.101: the last send).
    records = [
        _rec(0, 0.0, 0.10, 1.0),
        _rec(1, 0.0, 0.20, 1.1),
        _rec(2, 1.0, 1.10, 2.0),
        _rec(3, 1.101, 1.20, 2.1),
    ]
    w = steady_state_window(records, max_concurrency=2, closed_loop=True)
    # Start: first end (1.0) is later than every stream's first token (0.2).
    # End: the first end after the last send (1.101) is C's, at 2.002; then a stream is idle.
    # Both move into the quiet gap after their step's burst: the start between B's chunk at
    # 1.001 and the next step's first chunk (B, 1.101); the end between D's 2.003 and 2.103.
    assert w.start_s == pytest.approx((1.001 + 1.101) / 2)
    assert w.end_s == pytest.approx((2.003 + 2.103) / 2)
    assert w.plateau_in_flight == 2


def test_closed_loop_start_waits_for_slow_first_tokens() -> None:
    # B's first token (read at 1.501) comes after A ends (1.0): the window starts there.
    records = [
        _rec(0, 0.0, 0.1, 1.0),
        _rec(1, 0.0, 1.5, 3.0),
        _rec(2, 1.0, 1.6, 4.0),
        _rec(3, 3.001, 3.1, 5.0),
    ]
    w = steady_state_window(records, max_concurrency=2, closed_loop=True)
    # Start 1.501 moves to the gap before the next step's chunks (1.601); the end, C's last
    # chunk at 4.002, to the gap between D's 4.003 and 4.103.
    assert w.start_s == pytest.approx((1.501 + 1.601) / 2)
    assert w.end_s == pytest.approx((4.003 + 4.103) / 2)


def test_everything_sent_at_once_has_no_steady_state() -> None:
    records = [_rec(0, 0.0, 0.1, 1.0), _rec(1, 0.0, 0.2, 1.5)]
    with pytest.raises(NoSteadyStateError, match="no steady state"):
        steady_state_window(records, max_concurrency=None, closed_loop=True)
    with pytest.raises(NoSteadyStateError, match="no request"):
        steady_state_window([], max_concurrency=4, closed_loop=True)


def test_open_loop_waits_for_the_in_flight_plateau() -> None:
    # One request per second at 0..4, each 2.5 s long (first token after 0.1 s).
    # In flight over [0, 4]: 1 for 1 s, 2 for ~2 s, 3 for ~1 s -> time-weighted median 2,
    # first reached at t=1 with requests 0 and 1 in flight (first tokens 0.1 and 1.101).
    records = [_rec(i, float(i), i + 0.1, i + 2.5) for i in range(5)]
    w = steady_state_window(records, max_concurrency=None, closed_loop=False)
    # Start: first end 2.5 (after 1.101). End: first end after the last send (4.0), 4.502.
    # Each edge then moves into the gap after its burst: 2.502..2.601 and 4.504..4.603.
    assert w.start_s == pytest.approx((2.502 + 2.601) / 2)
    assert w.end_s == pytest.approx((4.504 + 4.603) / 2)
    assert w.plateau_in_flight == 2
