"""What the engine model works on: its configuration, the requests, the steps, and the record
each finished request leaves for `/sim/truth`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jouletune.gpu.simulated import GpuModel, StepOutcome
from jouletune.models import ModelArch
from jouletune.sim._perf import BatchShape, PerfConstants

__all__ = ["EngineConfig", "EngineStats", "RequestRecord", "SimRequest", "Step", "StepListener"]


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The server settings the engine model depends on (the `vllm serve` flags)."""

    arch: ModelArch
    gpu: GpuModel
    tensor_parallel_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    gpu_memory_utilization: float
    perf: PerfConstants
    # vLLM 0.24 serves with automatic prefix caching on unless --no-enable-prefix-caching.
    enable_prefix_caching: bool = True
    # API-server processes (--api-server-count; vLLM's default with one engine: 1).
    api_server_count: int = 1


class SimRequest:
    """One request inside the engine; times are on the engine's clock (unix seconds)."""

    __slots__ = (
        "api_server",
        "arrival_s",
        "block_hashes",
        "blocks",
        "cached_blocks",
        "computed",
        "finish_reason",
        "first_token_s",
        "last_token_s",
        "listener",
        "max_tokens",
        "output_tokens",
        "preemptions",
        "prev_token_s",
        "prompt_tokens",
        "queued_s",
        "ready_s",
        "request_id",
        "scheduled_s",
        "token_times_s",
    )

    def __init__(
        self,
        *,
        request_id: str,
        prompt_tokens: int,
        max_tokens: int,
        arrival_s: float,
        ready_s: float = math.nan,
        listener: StepListener | None = None,
        block_hashes: tuple[int, ...] = (),
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.arrival_s = arrival_s
        self.ready_s = ready_s  # set by the API-server model when it hands the request on
        self.api_server = 0  # which API-server process took it in
        self.listener = listener
        self.computed = 0  # tokens whose KV is in the cache (prompt, then outputs)
        self.output_tokens = 0
        # Chained hashes of the prompt's full blocks (prefix caching); empty: never shared.
        self.block_hashes = block_hashes
        self.blocks: list[int] = []  # KV blocks held, in token order
        self.cached_blocks = 0  # leading blocks whose hash is registered in the pool
        self.preemptions = 0
        self.queued_s = math.nan
        self.scheduled_s = math.nan
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.prev_token_s = math.nan
        self.finish_reason: str | None = None
        self.token_times_s: list[float] | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus outputs so far: what a recompute after preemption must prefill."""
        return self.prompt_tokens + self.output_tokens

    @property
    def prefilling(self) -> bool:
        """True until the KV of every prompt (and recomputed output) token is cached."""
        return self.computed < self.total_tokens - (1 if self.output_tokens else 0)


class StepListener:
    """Receives a request's tokens as steps end; the server writes them to the client."""

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        """`count` (0 or 1) new tokens of `req` were emitted at `t_s`."""

    def on_finish(self, req: SimRequest, t_s: float) -> None:
        """`req` finished at `t_s` (`req.finish_reason` says why)."""


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """Ground truth about one finished request (unix seconds)."""

    request_id: str
    arrival_unix_s: float
    first_token_unix_s: float
    last_token_unix_s: float
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


@dataclass
class Step:
    """One scheduled step: what runs, when, and what it costs."""

    start_s: float
    end_s: float
    scheduled: list[tuple[SimRequest, int]]
    batch: BatchShape
    outcome: StepOutcome
    newly_scheduled: list[SimRequest] = field(default_factory=list)
    # Requests that emitted a token in this step (set when the step finishes).
    emitted: list[SimRequest] = field(default_factory=list)


class EngineStats:
    """Counters the metrics collector reads (cumulative unless named otherwise)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found cached
        self.steps = 0
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
