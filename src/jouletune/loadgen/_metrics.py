"""Latency and throughput from request records: one pure function, no I/O, no printing.

Definitions follow vLLM's `vllm/benchmarks/serve.py`:
- TTFT: send to the first chunk with choices.
- E2EL: send to the last chunk with choices (the trailing usage chunk carries no token).
- TPOT, per request with more than one output token: (E2EL - TTFT) / (output_tokens - 1).
- ITL: every gap between consecutive chunks with choices.
- Output tokens: `usage.completion_tokens` (the number of chunks when the server sent none).

Scope (jouletune's choice, so latency and energy describe the same steady state): with a
window (start, end], statistics cover the steady-state cohort: successful requests sent after
the plateau moment (`Window.plateau_s`) whose last chunk arrived inside the window, all their
TTFTs, TPOTs, ITLs and E2ELs (when no such request exists, every successful request that ended
inside the window). Requests sent in the ramp-up's burst are left out: their TTFT measures the
burst, not the steady state. Without a window, every successful request counts. Window tokens
count the chunks that arrived inside the window, each worth the request's completion_tokens /
chunks. The window is open at its start because a closed-loop window starts at a request's
last chunk: that request belongs to the ramp-up. An empty sample set gives None, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from jouletune.loadgen._records import RequestRecord, Window

__all__ = ["BenchMetrics", "LatencyStats", "compute_metrics"]

_MS_PER_S = 1000.0


@dataclass(frozen=True, kw_only=True, slots=True)
class LatencyStats:
    """Summary of one latency distribution, milliseconds; every field None without samples."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of_seconds(cls, samples_s: npt.ArrayLike) -> LatencyStats:
        """Summarise samples given in seconds (linear-interpolated percentiles, as numpy)."""
        arr = np.asarray(samples_s, dtype=np.float64)
        if arr.size == 0:
            return cls(mean=None, p50=None, p90=None, p99=None)
        p50, p90, p99 = np.percentile(arr, [50.0, 90.0, 99.0]) * _MS_PER_S
        return cls(
            mean=float(arr.mean()) * _MS_PER_S, p50=float(p50), p90=float(p90), p99=float(p99)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchMetrics:
    """Everything the records say about a run.

    Attributes:
        completed: successful requests in the run.
        failed: failed requests in the run.
        latency_scope: `window` or `all` (see the module docstring).
        ttft_ms: time to first token, ms.
        tpot_ms: time per output token after the first, ms.
        itl_ms: inter-token (inter-chunk) latency, ms.
        e2el_ms: end-to-end latency, ms.
        latency_requests: requests the latency statistics cover.
        window_completed: successful requests whose last chunk arrived in the window.
        window_output_tokens: output tokens whose chunks arrived in the window.
        request_throughput: window_completed / window duration, requests/s.
        output_token_throughput: window_output_tokens / window duration, tokens/s.
        avg_in_flight: the client's mean in-flight request count over the window.
        run_duration_s: first send to last request end, seconds.
        run_output_tokens: output tokens of every successful request.
        run_request_throughput: completed / run_duration_s, requests/s.
        run_output_token_throughput: run_output_tokens / run_duration_s, tokens/s.
        run_ttft_ms: TTFT of every successful request, ramp-up included (vLLM's scope).
        run_tpot_ms: TPOT of every successful request, ramp-up included (vLLM's scope).
        total_input_tokens: `usage.prompt_tokens` summed over successful requests that sent it.
        tokens_per_chunk: output tokens per streamed chunk of the requests that ended in the
            window (every successful request without one); 1.0 when
            every chunk carried one token, more when the server merged tokens into a chunk
            (vLLM does when its API server falls behind the engine: ITL then spans several
            tokens and TPOT is the per-token figure). None without chunks.
    """

    completed: int
    failed: int
    latency_scope: Literal["window", "all"]
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2el_ms: LatencyStats
    latency_requests: int
    window_completed: int | None
    window_output_tokens: float | None
    request_throughput: float | None
    output_token_throughput: float | None
    avg_in_flight: float | None
    run_duration_s: float
    run_output_tokens: int
    run_request_throughput: float | None
    run_output_token_throughput: float | None
    run_ttft_ms: LatencyStats
    run_tpot_ms: LatencyStats
    total_input_tokens: int
    tokens_per_chunk: float | None


def compute_metrics(records: Sequence[RequestRecord], window: Window | None) -> BenchMetrics:
    """Turn a run's request records (and its steady-state window, if any) into metrics."""
    ok = [r for r in records if r.success]
    ended_in = ok if window is None else [r for r in ok if window.start_s < r.end_s <= window.end_s]
    cohort = ended_in if window is None else [r for r in ended_in if r.send_s > window.plateau_s]
    scoped = cohort or ended_in
    run_s = max(r.end_s for r in records) - min(r.send_s for r in records) if records else 0.0
    run_tokens = sum(r.tokens for r in ok)
    window_tokens = _window_tokens(records, window) if window else None
    return BenchMetrics(
        completed=len(ok),
        failed=len(records) - len(ok),
        latency_scope="all" if window is None else "window",
        ttft_ms=_ttft(scoped),
        tpot_ms=_tpot(scoped),
        itl_ms=LatencyStats.of_seconds(_itls_s(scoped)),
        e2el_ms=LatencyStats.of_seconds([r.e2el_s for r in scoped if r.e2el_s is not None]),
        latency_requests=len(scoped),
        window_completed=len(ended_in) if window else None,
        window_output_tokens=window_tokens,
        request_throughput=len(ended_in) / window.duration_s if window else None,
        output_token_throughput=(
            window_tokens / window.duration_s if window and window_tokens is not None else None
        ),
        avg_in_flight=_avg_in_flight(records, window) if window else None,
        run_duration_s=run_s,
        run_output_tokens=run_tokens,
        run_request_throughput=len(ok) / run_s if run_s > 0 else None,
        run_output_token_throughput=run_tokens / run_s if run_s > 0 else None,
        run_ttft_ms=_ttft(ok),
        run_tpot_ms=_tpot(ok),
        total_input_tokens=sum(r.prompt_tokens or 0 for r in ok),
        tokens_per_chunk=_tokens_per_chunk(ended_in),
    )


def _tokens_per_chunk(records: Sequence[RequestRecord]) -> float | None:
    # A server's trait, not a latency statistic: every request of the window counts, not only
    # the latency scope's cohort (at 256 streams that can be one request).
    chunks = sum(len(r.chunk_times_s) for r in records)
    return sum(r.tokens for r in records) / chunks if chunks else None


def _ttft(records: Sequence[RequestRecord]) -> LatencyStats:
    return LatencyStats.of_seconds([r.ttft_s for r in records if r.ttft_s is not None])


def _tpot(records: Sequence[RequestRecord]) -> LatencyStats:
    return LatencyStats.of_seconds([_tpot_s(r) for r in records if r.tokens > 1])


def _tpot_s(record: RequestRecord) -> float:
    ttft_s, e2el_s = record.ttft_s, record.e2el_s
    assert ttft_s is not None and e2el_s is not None, "a successful request has chunks"
    return (e2el_s - ttft_s) / (record.tokens - 1)


def _itls_s(records: Sequence[RequestRecord]) -> npt.NDArray[np.float64]:
    gaps = [np.diff(np.asarray(r.chunk_times_s, dtype=np.float64)) for r in records]
    return np.concatenate(gaps) if gaps else np.empty(0)


def _window_tokens(records: Sequence[RequestRecord], window: Window) -> float:
    total = 0.0
    for r in records:
        if not r.chunk_times_s or r.end_s < window.start_s or r.send_s > window.end_s:
            continue
        times = np.asarray(r.chunk_times_s, dtype=np.float64)
        inside = int(np.searchsorted(times, window.end_s, side="right")) - int(
            np.searchsorted(times, window.start_s, side="right")
        )
        total += inside * r.tokens / len(times)
    return total


def _avg_in_flight(records: Sequence[RequestRecord], window: Window) -> float:
    busy_s = sum(
        max(0.0, min(r.end_s, window.end_s) - max(r.send_s, window.start_s)) for r in records
    )
    return busy_s / window.duration_s
