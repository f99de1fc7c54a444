"""The steady-state window rule on hand-built runs."""

from __future__ import annotations

import pytest

from jouletune.loadgen import NoSteadyStateError, RequestRecord, steady_state_window


def _rec(index: int, send_s: float, first_s: float, end_s: float) -> RequestRecord:
    return RequestRecord(
        index=index,
        request_id=None,
        success=True,
        error=None,
        send_s=send_s,
        end_s=end_s,
        chunk_times_s=[first_s, end_s],
        output_tokens=2,
        prompt_tokens=1,
        expected_output_len=2,
    )


def test_closed_loop_starts_after_first_end_and_ends_when_first_stream_runs_dry() -> None:
    # Two streams. A and B start at 0; C takes A's slot at 1.0, D takes B's at 1.1 (last send).
    records = [
        _rec(0, 0.0, 0.10, 1.0),
        _rec(1, 0.0, 0.20, 1.1),
        _rec(2, 1.0, 1.10, 2.0),
        _rec(3, 1.1, 1.20, 2.1),
    ]
    w = steady_state_window(records, max_concurrency=2, closed_loop=True)
    # Start: first end (1.0) is later than every stream's first token (0.2).
    # End: the first end after the last send (1.1) is C's, at 2.0; after it a stream is idle.
    assert (w.start_s, w.end_s, w.plateau_in_flight) == (1.0, 2.0, 2)


def test_closed_loop_start_waits_for_slow_first_tokens() -> None:
    # B's first token (1.5) comes after A ends (1.0): the window starts at 1.5.
    records = [
        _rec(0, 0.0, 0.1, 1.0),
        _rec(1, 0.0, 1.5, 3.0),
        _rec(2, 1.0, 1.6, 4.0),
        _rec(3, 3.0, 3.1, 5.0),
    ]
    w = steady_state_window(records, max_concurrency=2, closed_loop=True)
    assert (w.start_s, w.end_s) == (1.5, 4.0)


def test_everything_sent_at_once_has_no_steady_state() -> None:
    records = [_rec(0, 0.0, 0.1, 1.0), _rec(1, 0.0, 0.2, 1.5)]
    with pytest.raises(NoSteadyStateError, match="no steady state"):
        steady_state_window(records, max_concurrency=None, closed_loop=True)
    with pytest.raises(NoSteadyStateError, match="no request"):
        steady_state_window([], max_concurrency=4, closed_loop=True)


def test_open_loop_waits_for_the_in_flight_plateau() -> None:
    # One request per second at 0..4, each 2.5 s long (first token after 0.1 s).
    # In flight over [0, 4]: 1 for 1 s, 2 for 2 s, 3 for 1 s -> time-weighted median 2,
    # first reached at t=1 with requests 0 and 1 in flight (first tokens 0.1 and 1.1).
    records = [_rec(i, float(i), i + 0.1, i + 2.5) for i in range(5)]
    w = steady_state_window(records, max_concurrency=None, closed_loop=False)
    # Start: first end 2.5 (after 1.1). End: first end after the last send (4.0) is 4.5.
    assert (w.start_s, w.end_s, w.plateau_in_flight) == (2.5, 4.5, 2)
