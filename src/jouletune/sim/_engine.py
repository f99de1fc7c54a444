"""The engine model: vLLM V1's scheduler over simulated GPUs, on a caller-supplied clock.

`Engine` is pure bookkeeping with no I/O and no sleeping: `begin_step(start_s)` schedules a
batch like vLLM V1 (running requests first, one token per decode and prefill chunks within
the `max_num_batched_tokens` budget, then waiting requests FCFS while `max_num_seqs` and the
KV cache allow; when a running request cannot get a KV block the newest running request is
preempted and recomputed later) and prices it on every TP rank's `SimulatedGpu`;
`finish_step(step)` applies it at the step's end: first tokens for finished prefills, one
token per decode, finished requests freed. The live server (`_server.py`) sleeps until each
step's end on the wall clock; `benchmarks/sim_calibration.py` jumps a virtual clock instead.
Both get the same timings.

Two things stand between the clients and the scheduler, as in vLLM 0.24:

* the API-server process (`_frontend.ApiServer`): a request reaches the scheduler only after
  the API server's one event loop took it in, and a step's tokens reach the clients only after
  that loop wrote the step's chunks; everything in progress on the loop shares it (processor
  sharing), so taking requests in slows with every running stream's chunks and the other
  way round;
* asynchronous scheduling (vLLM 0.24's default): the engine core schedules step k+1 while
  step k runs, so a step that follows another without a gap was scheduled when its
  predecessor started (once the host had launched it, if that ended later) and admits only
  the requests that had reached the scheduler by then.
  It also launches step k+1 before it hands out step k's tokens. A step of more tokens than
  vLLM captures CUDA graphs for (`min(2 · max_num_seqs, 512)`: any step that prefills a
  prompt beside the running decodes) is launched kernel by kernel, which takes the host
  longer than a short step runs: such a step starts, and its predecessor's tokens leave, no
  sooner than `eager_launch_s` + `eager_launch_per_token_s` per prompt token it prefills +
  `eager_launch_per_seq_s` per sequence it decodes after the tokens before them left. An
  idle engine launches it from when it schedules it: the step ends no sooner than that
  launch, and the next step admits what reached the scheduler meanwhile.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence

from jouletune.gpu.simulated import KernelWork, SimulatedGpu, StepOutcome
from jouletune.sim._frontend import ApiServer
from jouletune.sim._kvcache import BLOCK_SIZE, BlockPool
from jouletune.sim._perf import BatchShape, kv_cache_tokens, step_work
from jouletune.sim._work import (
    EngineConfig,
    EngineStats,
    RequestRecord,
    SimRequest,
    Step,
    StepListener,
)

__all__ = ["Engine", "EngineConfig", "RequestRecord", "SimRequest", "Step", "StepListener"]


# Ground truth older than this is dropped so a long-running server's memory stays bounded
# (the simulated GPUs keep energy history as long); /sim/truth cannot look further back.
TRUTH_RETENTION_S = 6 * 3600.0
# Prune in bulk: deleting from the front of an array is O(n).
_PRUNE_BATCH = 4096

# One step's output on its way through the API server: (request, finished) per token.
Output = list[tuple[SimRequest, bool]]


class Engine:
    """vLLM V1's scheduling and the step-time/power model, driven by a clock the caller owns.

    Args:
        config: the server settings.
        gpus: one `SimulatedGpu` per TP rank.
        on_step: called with every finished step (metrics, histograms).
        on_request_done: called with every finished or aborted request (metrics, truth).
        on_deliver: called with every step's tokens when they reach the clients (metrics).
    """

    def __init__(
        self,
        *,
        config: EngineConfig,
        gpus: Sequence[SimulatedGpu],
        on_step: Callable[[Step], None] | None = None,
        on_request_done: Callable[[SimRequest], None] | None = None,
        on_deliver: Callable[[Output, float], None] | None = None,
    ) -> None:
        assert len(gpus) == config.tensor_parallel_size, "one SimulatedGpu per TP rank"
        self.config = config
        self.gpus = list(gpus)
        self._on_step = on_step
        self._on_request_done = on_request_done
        self._on_deliver = on_deliver
        perf = config.perf
        # One event loop per API-server process (`--api-server-count`); requests are dealt
        # to them in turn, and each writes the chunks of its own requests.
        self.api_servers: list[ApiServer[SimRequest, Output]] = [
            ApiServer(
                request_s=perf.api_request_s,
                chunk_s=perf.api_chunk_s,
                latency_s=perf.frontend_s,
                render_s=lambda req: perf.render_s_per_token * req.prompt_tokens,
                on_ready=self._reached_scheduler,
                on_output=self._deliver,
            )
            for _ in range(config.api_server_count)
        ]
        self._dealt = 0
        self.kv_tokens = kv_cache_tokens(
            arch=config.arch,
            gpu=config.gpu,
            tp=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            perf=config.perf,
        )
        self.num_blocks = max(self.kv_tokens // BLOCK_SIZE, 0)
        self.pool = BlockPool(
            num_blocks=self.num_blocks, enable_caching=config.enable_prefix_caching
        )
        self.pending: list[SimRequest] = []  # through the API server, not yet at the scheduler
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.stats = EngineStats()
        # Ground truth: cumulative tokens emitted at each step end, and finished requests.
        self._emit_times_s = array("d")
        self._emit_cum = array("q")
        self._emitted = 0
        self.records: list[RequestRecord] = []
        self._record_times_s = array("d")
        # The last step: when the next one is scheduled (asynchronous scheduling), and its end.
        self._next_cutoff_s = -math.inf
        self._last_end_s = -math.inf
        # The last step's tokens wait for the next step's launch (`begin_step`), and when the
        # tokens before them left.
        self._held: tuple[Output, float] | None = None
        self._last_emit_s = -math.inf
        self._graph_max_tokens = min(2 * config.max_num_seqs, 512, config.max_num_batched_tokens)

    # --- requests -------------------------------------------------------------------------

    def add(self, req: SimRequest) -> None:
        """`req` arrives at the API server at `req.arrival_s`.

        The API server takes it in as the model's clock passes (`begin_step`, `finish_step`,
        `advance_frontend`, `next_ready_s`); it reaches the scheduler at `req.ready_s`.
        """
        req.api_server = self._dealt % len(self.api_servers)
        self._dealt += 1
        self.api_servers[req.api_server].submit(req, req.arrival_s)

    def abort(self, req: SimRequest, t_s: float) -> None:
        """Drop `req` (its client went away) and free its KV blocks."""
        if req.finish_reason is not None:
            return
        for queue in (self.pending, self.running):
            if req in queue:
                queue.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)
        self._free(req)
        self._finish(req, "abort", t_s)

    def has_work(self) -> bool:
        """True while any request or token is in the API server, pending, waiting or running."""
        return bool(
            self.pending
            or self.waiting
            or self.running
            or self._held
            or any(map(len, self.api_servers))
        )

    def next_ready_s(self, now_s: float | None = None) -> float | None:
        """When the earliest pending request reaches the scheduler (None if none pending).

        The caller asks when no step runs. On a virtual clock (`now_s` None) the API server
        then serves its work event by event until a request is through it: no step output
        can arrive before that any more, and the clients' next requests come from its own
        deliveries. On the wall clock it serves up to `now_s` only, since a client may still
        send a request that shares the loop with the work in progress.
        """
        self._hand_out()
        if now_s is not None:
            self.advance_frontend(now_s)
        else:
            while not self.pending and (event_s := self.next_frontend_event_s()) is not None:
                self.advance_frontend(event_s)
        return min((r.ready_s for r in self.pending), default=None)

    def advance_frontend(self, now_s: float) -> None:
        """Let the API servers serve up to `now_s`: write finished chunks, hand off requests.

        Several servers are served event by event in time order, so tokens are delivered in
        time order (a delivery may make a client send its next request to another server).
        """
        if len(self.api_servers) == 1:
            self.api_servers[0].advance(now_s)
            return
        while (event_s := self.next_frontend_event_s()) is not None and event_s <= now_s:
            for api in self.api_servers:
                if api.next_event_s() == event_s:
                    api.advance(event_s)
                    break

    def next_frontend_event_s(self) -> float | None:
        """When an API server next finishes something, if nothing arrives first."""
        return min(
            (t for api in self.api_servers if (t := api.next_event_s()) is not None), default=None
        )

    def can_schedule(self) -> bool:
        """True when a step would have something to run."""
        return bool(self.running or self.waiting)

    # --- steps ----------------------------------------------------------------------------

    def begin_step(self, start_s: float) -> Step | None:
        """Schedule a batch at `start_s` and price it on the GPUs; None when nothing can run.

        A step that starts where the last one ended was scheduled (asynchronous scheduling)
        when the last one started, or when the host had launched the last one if that ended
        later (vLLM's engine-core loop takes requests in, schedules and launches step k+1,
        then waits for step k): it admits the requests that had reached the scheduler by
        then. If that leaves nothing to run, vLLM's engine core waits for the last step and
        schedules again; so does the model, at `start_s`.

        It also hands the last step's tokens to the API server: at the last step's end, or,
        when this step follows it without a gap and is too large for a CUDA graph, once the
        host has launched this one (module docstring).
        """
        busy = start_s <= self._last_end_s
        if not busy:  # nothing to launch behind: the tokens left before the API server ran on
            self._hand_out()
        self.advance_frontend(start_s)
        decided_s = self._next_cutoff_s if busy else start_s
        self._admit_pending(decided_s)
        scheduled, newly = self._schedule(start_s)
        if not scheduled and decided_s < start_s:
            self._admit_pending(start_s)
            scheduled, newly = self._schedule(start_s)
        if not scheduled:
            self._hand_out()
            return None
        batch = _batch_shape(scheduled)
        launched_s = start_s
        if batch.num_tokens > self._graph_max_tokens:
            # busy: after the last tokens left and the last step was launched; idle: now
            launch_from_s = max(self._last_emit_s, self._next_cutoff_s) if busy else start_s
            launched_s = max(start_s, launch_from_s + self._eager_launch_s(scheduled))
        self._hand_out(launched_s)
        work, outcomes, slowest = self._plan(batch)
        duration_s = slowest.duration_s
        # The GPU runs the step's kernels as the host launches them, behind the last step's:
        # the step ends no sooner than its launch.
        start_s = max(start_s, launched_s - duration_s)
        for gpu, outcome in zip(self.gpus, outcomes, strict=True):
            gpu.record_step(outcome, work, start_s=start_s)
        self._next_cutoff_s = launched_s  # the next step is scheduled once this one is launched
        self._last_end_s = start_s + duration_s
        return Step(
            start_s=start_s,
            end_s=start_s + duration_s,
            scheduled=scheduled,
            batch=batch,
            outcome=slowest,
            newly_scheduled=newly,
        )

    def _plan(self, batch: BatchShape) -> tuple[KernelWork, list[StepOutcome], StepOutcome]:
        """The step's work, each TP rank's outcome (all of the slowest rank's duration), and
        the slowest rank's."""
        cfg = self.config
        work = step_work(
            arch=cfg.arch, gpu=cfg.gpu, tp=cfg.tensor_parallel_size, batch=batch, perf=cfg.perf
        )
        # TP ranks run in lockstep: the slowest rank (lowest limit) sets the step's duration.
        outcomes = [gpu.plan_step(work) for gpu in self.gpus]
        slowest = max(outcomes, key=lambda o: o.duration_s)
        equal = []
        for gpu, outcome in zip(self.gpus, outcomes, strict=True):
            if outcome.duration_s < slowest.duration_s:
                # A faster rank waits at the barrier: same dynamic energy over a longer step.
                dyn_j = (outcome.power_w - gpu.idle_power_w) * outcome.duration_s
                outcome = StepOutcome(
                    duration_s=slowest.duration_s,
                    power_w=gpu.idle_power_w + dyn_j / slowest.duration_s,
                    sm_clock_hz=outcome.sm_clock_hz,
                    capped=outcome.capped,
                )
            equal.append(outcome)
        return work, equal, slowest

    def finish_step(self, step: Step) -> None:
        """Apply `step` at its end: count tokens, free finished requests' blocks, and hand
        the step's tokens to the API server, which writes them to the clients."""
        t_s = step.end_s
        output: Output = []
        for req, n_new in step.scheduled:
            if req.finish_reason is not None:  # aborted while the step ran
                continue
            was_prefilling = req.prefilling
            req.computed += n_new
            if was_prefilling and req.prefilling:
                continue  # a prefill chunk that does not finish the prompt emits nothing
            if req.output_tokens == 0:
                self.stats.prompt_tokens += req.prompt_tokens
            req.output_tokens += 1
            done = req.output_tokens >= req.max_tokens
            output.append((req, done))
            if done:
                self.running.remove(req)
                self._free(req)
                req.finish_reason = "length"
        self.stats.generation_tokens += len(output)
        self.stats.steps += 1
        step.emitted = [req for req, _ in output]
        self._held = (output, t_s)  # handed out once the next step is launched
        self.advance_frontend(t_s)
        if self._on_step is not None:
            self._on_step(step)

    def _eager_launch_s(self, scheduled: list[tuple[SimRequest, int]]) -> float:
        """Host time to launch a step without a CUDA graph (`PerfConstants.eager_launch_s`)."""
        perf = self.config.perf
        decodes = sum(1 for req, _ in scheduled if not req.prefilling)
        prefill_tokens = sum(n for req, n in scheduled if req.prefilling)
        return (
            perf.eager_launch_s
            + perf.eager_launch_per_token_s * prefill_tokens
            + perf.eager_launch_per_seq_s * decodes
        )

    def _hand_out(self, launched_s: float = -math.inf) -> None:
        """Hand the last step's tokens to the API server at its end, or once the engine core
        has launched the step after it (at `launched_s`), if that is later."""
        if self._held is None:
            return
        output, end_s = self._held
        self._held = None
        t_s = max(end_s, launched_s)
        self._last_emit_s = t_s
        if len(self.api_servers) == 1:
            self.api_servers[0].output(output, len(output), t_s)
        else:
            for i, api in enumerate(self.api_servers):
                own = [item for item in output if item[0].api_server == i]
                api.output(own, len(own), t_s)

    # --- ground truth ---------------------------------------------------------------------

    def tokens_emitted_by(self, t_s: float) -> int:
        """Output tokens emitted at or before `t_s` (every token carries its step's end)."""
        i = bisect_right(self._emit_times_s, t_s) - 1
        return int(self._emit_cum[i]) if i >= 0 else 0

    def records_finished_between(self, start_s: float, end_s: float) -> list[RequestRecord]:
        """Requests whose last token came in [start_s, end_s]."""
        lo = bisect_right(self._record_times_s, start_s - 1e-12)
        hi = bisect_right(self._record_times_s, end_s)
        return self.records[lo:hi]

    @property
    def free_blocks(self) -> int:
        """KV blocks no request holds (empty or holding a cached prefix)."""
        return self.pool.free_blocks

    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (vllm:kv_cache_usage_perc)."""
        return 1.0 - self.free_blocks / self.num_blocks if self.num_blocks else 0.0

    # --- internals ------------------------------------------------------------------------

    def _prune(self, before_s: float) -> None:
        cut = bisect_right(self._emit_times_s, before_s) - 1
        if cut > _PRUNE_BATCH:
            del self._emit_times_s[:cut]
            del self._emit_cum[:cut]
        cut = bisect_right(self._record_times_s, before_s)
        if cut > _PRUNE_BATCH:
            del self._record_times_s[:cut]
            del self.records[:cut]

    def _reached_scheduler(self, req: SimRequest, ready_s: float) -> None:
        if req.finish_reason == "abort":
            return  # its client went away while the API server held it
        req.ready_s = ready_s
        self.pending.append(req)

    def _deliver(self, output: Output, t_s: float) -> None:
        """The chunks of one step reach the clients at `t_s`: the tokens' times."""
        delivered = 0
        for req, done in output:
            if req.finish_reason == "abort":
                continue
            delivered += 1
            if math.isnan(req.first_token_s):
                req.first_token_s = t_s
            req.prev_token_s = req.last_token_s
            req.last_token_s = t_s
            if req.listener is not None:
                req.listener.on_tokens(req, 1, t_s)
            if done:
                self._finish(req, "length", t_s)
        self._emitted += delivered
        self._emit_times_s.append(t_s)
        self._emit_cum.append(self._emitted)
        self._prune(t_s - TRUTH_RETENTION_S)
        if self._on_deliver is not None:
            self._on_deliver(output, t_s)

    def _admit_pending(self, now_s: float) -> None:
        if not self.pending:
            return
        still = []
        for req in self.pending:
            if req.ready_s <= now_s:
                req.queued_s = req.ready_s
                self.waiting.append(req)
            else:
                still.append(req)
        self.pending = still

    def _schedule(self, now_s: float) -> tuple[list[tuple[SimRequest, int]], list[SimRequest]]:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n_new = min(self._tokens_needed(req), budget)
            while not self._allocate(req, n_new):
                victim = self.running.pop()  # the newest request loses its blocks
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    break
            else:
                scheduled.append((req, n_new))
                budget -= n_new
                i += 1
                continue
            break  # req itself was preempted; everything after it is gone too
        newly: list[SimRequest] = []
        while (
            self.waiting
            and budget > 0
            and len(self.running) < self.config.max_num_seqs
            and not preempted  # vLLM V1 admits no new request in a step that preempted
        ):
            req = self.waiting[0]
            if not self._admit(req, budget):
                break
            n_new = min(self._tokens_needed(req), budget)
            self.waiting.popleft()
            self.running.append(req)
            if math.isnan(req.scheduled_s):
                req.scheduled_s = now_s
            newly.append(req)
            scheduled.append((req, n_new))
            budget -= n_new
        for victim in reversed(preempted):
            self.waiting.appendleft(victim)
        return scheduled, newly

    def _tokens_needed(self, req: SimRequest) -> int:
        if req.prefilling:
            return req.total_tokens - req.computed - (1 if req.output_tokens else 0)
        return 1

    def _admit(self, req: SimRequest, budget: int) -> bool:
        """Give a waiting request its cached prefix and the blocks of its first chunk."""
        hits: list[int] = []
        if req.computed == 0 and self.config.enable_prefix_caching:
            # vLLM computes at least the last prompt token, so a fully cached prompt
            # still recomputes its last block (kv_cache_manager.get_computed_blocks).
            hits = self.pool.cached_prefix(req.block_hashes, (req.total_tokens - 1) // BLOCK_SIZE)
        cached = len(hits) * BLOCK_SIZE
        n_new = min(req.total_tokens - (1 if req.output_tokens else 0) - cached, budget)
        need = math.ceil((cached + n_new) / BLOCK_SIZE) - len(hits)
        if need + self.pool.evictable(hits) > self.pool.free_blocks:
            return False
        if req.computed == 0 and self.config.enable_prefix_caching:
            self.stats.prefix_queries += req.total_tokens
            self.stats.prefix_hits += cached
        self.pool.touch(hits)
        req.blocks = hits
        req.cached_blocks = len(hits)
        req.computed = cached
        allocated = self._allocate(req, n_new)
        assert allocated, "blocks were counted before the allocation"
        return True

    def _allocate(self, req: SimRequest, n_new: int) -> bool:
        need = math.ceil((req.computed + n_new) / BLOCK_SIZE) - len(req.blocks)
        if need > 0:
            blocks = self.pool.allocate(need)
            if blocks is None:
                return False
            req.blocks.extend(blocks)
        # Register the prompt blocks this step fills, as vLLM does when it allocates them.
        full = min((req.computed + n_new) // BLOCK_SIZE, len(req.block_hashes))
        for i in range(req.cached_blocks, full):
            self.pool.register(req.blocks[i], req.block_hashes[i])
        req.cached_blocks = max(req.cached_blocks, full)
        return True

    def _preempt(self, req: SimRequest) -> None:
        self._free(req)
        req.computed = 0
        req.preemptions += 1
        self.stats.preemptions += 1

    def _free(self, req: SimRequest) -> None:
        self.pool.free(req.blocks)
        req.blocks = []
        req.cached_blocks = 0

    def _finish(self, req: SimRequest, reason: str, t_s: float) -> None:
        req.finish_reason = reason
        self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1
        if reason != "abort":
            self.records.append(
                RequestRecord(
                    request_id=req.request_id,
                    arrival_unix_s=req.arrival_s,
                    first_token_unix_s=req.first_token_s,
                    last_token_unix_s=req.last_token_s,
                    prompt_tokens=req.prompt_tokens,
                    output_tokens=req.output_tokens,
                    finish_reason=reason,
                )
            )
            self._record_times_s.append(t_s)
        if req.listener is not None:
            req.listener.on_finish(req, t_s)
        if self._on_request_done is not None:
            self._on_request_done(req)


def _batch_shape(scheduled: list[tuple[SimRequest, int]]) -> BatchShape:
    num_tokens = 0
    sampled = 0
    context = 0
    pairs = 0.0
    for req, n_new in scheduled:
        num_tokens += n_new
        context += req.computed
        # causal: the chunk's i-th token attends to computed + i + 1 keys
        pairs += n_new * (req.computed + (n_new + 1) / 2)
        completes = req.computed + n_new >= req.total_tokens - (1 if req.output_tokens else 0)
        if completes:
            sampled += 1
    return BatchShape(
        num_tokens=num_tokens,
        num_seqs=len(scheduled),
        num_sampled=sampled,
        context_tokens=context,
        attention_pairs=pairs,
    )
