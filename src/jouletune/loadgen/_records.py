"""What one request produced, as plain data: the input of every metric.

A failed request is a record too (`success=False`, `error`), never an exception. All times
are `time.perf_counter()` seconds on the load generator's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["RequestRecord", "Window"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestRecord:
    """One request of the measured run.

    Attributes:
        index: position of the request in the workload.
        request_id: the `id` field of the stream's chunks (the server's request id), if seen.
        success: True when at least one chunk with choices arrived and the stream ended cleanly.
        error: why the request failed, one line; None on success.
        send_s: when the request was on the wire (its last byte handed to the socket),
            seconds (perf_counter); see `_client` for why not before the POST.
        end_s: when the request ended: the last chunk with choices on success, else the moment
            the failure was seen, seconds (perf_counter).
        chunk_times_s: arrival time of every chunk with choices, seconds (perf_counter); these
            are the "tokens" of vLLM's ITL definition (one chunk may carry several tokens).
        output_tokens: `usage.completion_tokens` of the final chunk; None when not sent.
        prompt_tokens: `usage.prompt_tokens` of the final chunk; None when not sent.
        expected_output_len: the `max_tokens` the request asked for.
    """

    index: int
    request_id: str | None
    success: bool
    error: str | None
    send_s: float
    end_s: float
    chunk_times_s: Sequence[float]
    output_tokens: int | None
    prompt_tokens: int | None
    expected_output_len: int

    @property
    def first_token_s(self) -> float | None:
        """Arrival of the first chunk with choices, seconds (perf_counter); None if none came."""
        return self.chunk_times_s[0] if self.chunk_times_s else None

    @property
    def ttft_s(self) -> float | None:
        """Time to first token, seconds: first chunk with choices minus send."""
        first = self.first_token_s
        return None if first is None else first - self.send_s

    @property
    def e2el_s(self) -> float | None:
        """End-to-end latency, seconds: last chunk with choices minus send."""
        return self.chunk_times_s[-1] - self.send_s if self.chunk_times_s else None

    @property
    def tokens(self) -> int:
        """Output tokens: `usage.completion_tokens`, else the number of chunks with choices."""
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class Window:
    """The steady-state window, seconds on the perf_counter clock (`start_s < end_s`).

    Attributes:
        start_s: window start, seconds (perf_counter).
        end_s: window end, seconds (perf_counter).
        plateau_in_flight: the in-flight request count the run settled at (the level the
            start rule waited for).
        plateau_s: when the in-flight count first reached that level, seconds (perf_counter);
            requests sent after it are the steady-state cohort whose latencies are reported
            (-inf: every request).
        rule: `client` (from the requests' own times) or `server-queue` (the server ran a
            full batch while requests queued; from its running and waiting gauges).
    """

    start_s: float
    end_s: float
    plateau_in_flight: int
    plateau_s: float = float("-inf")
    rule: Literal["client", "server-queue"] = "client"

    def __post_init__(self) -> None:
        if not self.end_s > self.start_s:
            raise ValueError(f"empty window: {self.start_s=} {self.end_s=}")

    @property
    def duration_s(self) -> float:
        """Length of the window, seconds."""
        return self.end_s - self.start_s
