"""compute_metrics against values computed by hand (vLLM's definitions, numpy's linear
percentiles)."""

from __future__ import annotations

import pytest

from jouletune.loadgen import RequestRecord, Window, compute_metrics
from jouletune.loadgen._assembly import merged_tokens_warning


def _rec(
    index: int,
    send_s: float,
    chunks_s: list[float],
    *,
    tokens: int | None,
    ok: bool = True,
    end_s: float | None = None,
    prompt_tokens: int | None = 10,
) -> RequestRecord:
    return RequestRecord(
        index=index,
        request_id=f"cmpl-{index}",
        success=ok,
        error=None if ok else "boom",
        send_s=send_s,
        end_s=end_s if end_s is not None else chunks_s[-1],
        chunk_times_s=chunks_s,
        output_tokens=tokens,
        prompt_tokens=prompt_tokens if ok else None,
        expected_output_len=tokens or 4,
    )


# R0: TTFT 100 ms, E2EL 400 ms, TPOT (400-100)/(3-1) = 150 ms, ITLs 100, 200 ms.
# R1: 4 tokens in 2 chunks: TTFT 50, E2EL 150, TPOT (150-50)/(4-1) = 33.33 ms, ITL 100 ms.
# R2: failed after one chunk (no usage): counts as 1 token in the window, no latency.
# R3: one token: TTFT 100, E2EL 100, no TPOT, no ITL.
RECORDS = [
    _rec(0, 0.0, [0.1, 0.2, 0.4], tokens=3),
    _rec(1, 1.0, [1.05, 1.15], tokens=4),
    _rec(2, 0.3, [0.35], tokens=None, ok=False, end_s=0.7),
    _rec(3, 0.5, [0.6], tokens=1),
]


def test_whole_run_statistics_match_hand_computed_values() -> None:
    m = compute_metrics(RECORDS, None)
    assert (m.completed, m.failed, m.latency_scope) == (3, 1, "all")
    # TTFT samples [100, 50, 100]: sorted [50, 100, 100]; p90 at rank 1.8 -> 100.
    assert m.ttft_ms.mean == pytest.approx(250 / 3)
    assert m.ttft_ms.p50 == pytest.approx(100) and m.ttft_ms.p90 == pytest.approx(100)
    # TPOT samples [150, 33.33]: p90 at rank 0.9 -> 33.33 + 0.9 * 116.67.
    assert m.tpot_ms.mean == pytest.approx((150 + 100 / 3) / 2)
    assert m.tpot_ms.p90 == pytest.approx(100 / 3 + 0.9 * (150 - 100 / 3))
    assert m.tpot_ms.p99 == pytest.approx(100 / 3 + 0.99 * (150 - 100 / 3))
    # ITL samples [100, 200, 100]: sorted [100, 100, 200]; p90 at rank 1.8 -> 180, p99 -> 198.
    assert m.itl_ms.mean == pytest.approx(400 / 3)
    assert m.itl_ms.p50 == pytest.approx(100)
    assert m.itl_ms.p90 == pytest.approx(180) and m.itl_ms.p99 == pytest.approx(198)
    # E2EL samples [400, 150, 100]: sorted [100, 150, 400]; p90 at rank 1.8 -> 350.
    assert m.e2el_ms.mean == pytest.approx(650 / 3)
    assert m.e2el_ms.p50 == pytest.approx(150) and m.e2el_ms.p90 == pytest.approx(350)
    # Run: first send 0.0 to last end 1.15; 3 + 4 + 1 tokens from successful requests.
    assert m.run_duration_s == pytest.approx(1.15)
    assert m.run_output_tokens == 8
    assert m.run_output_token_throughput == pytest.approx(8 / 1.15)
    assert m.total_input_tokens == 30
    assert m.window_output_tokens is None and m.request_throughput is None
    # Successful requests' tokens over their chunks: (3 + 4 + 1) / (3 + 2 + 1).
    assert m.tokens_per_chunk == pytest.approx(8 / 6)


def test_window_scopes_latency_and_counts_tokens_whose_chunks_arrived_inside() -> None:
    window = Window(start_s=0.15, end_s=1.1, plateau_in_flight=2)
    m = compute_metrics(RECORDS, window)
    assert m.latency_scope == "window"
    # R0 (ends 0.4) and R3 (ends 0.6) end inside; R1 ends at 1.15, after the window.
    assert m.window_completed == 2
    assert m.ttft_ms.mean == pytest.approx(100)
    assert m.tpot_ms.mean == pytest.approx(150)  # R3 has one token: no TPOT
    assert m.e2el_ms.mean == pytest.approx(250)
    # Chunks inside [0.15, 1.1]: R0 0.2, 0.4 (1 token each); R1 1.05 (2 tokens per chunk);
    # R2 0.35 (failed, 1 chunk = 1 token); R3 0.6 -> 2 + 2 + 1 + 1 = 6 tokens.
    assert m.window_output_tokens == pytest.approx(6)
    assert m.output_token_throughput == pytest.approx(6 / 0.95)
    assert m.request_throughput == pytest.approx(2 / 0.95)
    # In flight inside the window: R0 0.25 s, R1 0.1 s, R2 0.4 s, R3 0.1 s.
    assert m.avg_in_flight == pytest.approx(0.85 / 0.95)


def test_no_samples_give_none_never_zero() -> None:
    failed = [_rec(0, 0.0, [], tokens=None, ok=False, end_s=0.5)]
    m = compute_metrics(failed, None)
    for stats in (m.ttft_ms, m.tpot_ms, m.itl_ms, m.e2el_ms):
        assert (stats.mean, stats.p50, stats.p90, stats.p99) == (None, None, None, None)
    assert (m.completed, m.failed) == (0, 1)
    empty = compute_metrics([], None)
    assert empty.run_duration_s == 0.0 and empty.run_output_token_throughput is None


def test_merged_tokens_are_flagged_with_itl_against_tpot() -> None:
    one_each = compute_metrics([_rec(0, 0.0, [0.1, 0.2, 0.3, 0.4], tokens=4)], None)
    assert one_each.tokens_per_chunk == 1.0 and merged_tokens_warning(one_each) == []
    # 7 tokens in 4 chunks 100 ms apart: TPOT (400 - 100) / (7 - 1) = 50 ms.
    merged = compute_metrics([_rec(0, 0.0, [0.1, 0.2, 0.3, 0.4], tokens=7)], None)
    (warning,) = merged_tokens_warning(merged)
    assert "1.75 tokens per chunk" in warning
    assert "ITL 100.0 ms mean against TPOT 50.0 ms" in warning


def test_usage_tokens_override_chunk_count() -> None:
    # Two chunks but usage says 9 tokens: TPOT divides by 8, not 1.
    m = compute_metrics([_rec(0, 0.0, [0.1, 0.9], tokens=9)], None)
    assert m.tpot_ms.mean == pytest.approx(100)
    assert m.itl_ms.mean == pytest.approx(800)


def test_window_is_open_at_its_start() -> None:
    # A closed-loop window starts at a request's last chunk: that request (and that chunk)
    # belong to the ramp-up; a request ending exactly at the window's end is inside.
    at_start = _rec(0, 0.0, [0.5, 1.0], tokens=2)
    at_end = _rec(1, 0.5, [1.5, 2.0], tokens=2)
    m = compute_metrics([at_start, at_end], Window(start_s=1.0, end_s=2.0, plateau_in_flight=1))
    assert m.window_completed == 1 and m.ttft_ms.mean == pytest.approx(1000)
    assert m.window_output_tokens == pytest.approx(2)  # at_end's chunks at 1.5 and 2.0


def test_latency_covers_the_steady_state_cohort() -> None:
    # Both requests end inside the window, but `burst` was sent in the ramp-up (before the
    # plateau moment at 0.5): its TTFT measures the initial burst and is left out.
    burst = _rec(0, 0.0, [0.9, 1.6], tokens=2)
    steady = _rec(1, 0.6, [0.8, 1.7], tokens=2)
    window = Window(start_s=1.0, end_s=2.0, plateau_in_flight=2, plateau_s=0.5)
    m = compute_metrics([burst, steady], window)
    assert (m.latency_requests, m.window_completed) == (1, 2)
    assert m.ttft_ms.mean == pytest.approx(200)
    assert m.request_throughput == pytest.approx(2.0)  # every completion in the window counts
    # With no request sent after the plateau, the statistics fall back to all that ended in it.
    only_burst = compute_metrics([burst], window)
    assert only_burst.latency_requests == 1 and only_burst.ttft_ms.mean == pytest.approx(900)
    # The run-wide statistics (vLLM's scope, to compare with `vllm bench serve`) keep the
    # burst: TTFTs 900 and 200 ms, TPOTs 700 and 900 ms.
    assert m.run_ttft_ms.mean == pytest.approx(550)
    assert m.run_tpot_ms.p50 == pytest.approx(800)
