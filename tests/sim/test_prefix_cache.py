"""Prefix caching (vLLM's block pool) and the bench-like closed-loop replay."""

from __future__ import annotations

from itertools import pairwise

from jouletune.gpu.simulated import gpu_model
from jouletune.models import model_arch
from jouletune.sim import (
    BLOCK_SIZE,
    DEFAULT_PERF,
    ClientRequest,
    ClosedLoopReplay,
    EngineConfig,
    prompt_block_hashes,
)
from jouletune.sim._kvcache import BlockPool


def _config(*, caching: bool = True, max_num_seqs: int = 8) -> EngineConfig:
    return EngineConfig(
        arch=model_arch("meta-llama/Llama-3.1-8B-Instruct"),
        gpu=gpu_model("h100-80gb"),
        tensor_parallel_size=1,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=8192,
        max_model_len=2048,
        gpu_memory_utilization=0.92,
        perf=DEFAULT_PERF,
        enable_prefix_caching=caching,
    )


def _prompt(first: int, length: int) -> ClientRequest:
    words = [f"t{first + i}" for i in range(length)]
    return ClientRequest(
        prompt_tokens=length, max_tokens=4, block_hashes=prompt_block_hashes(words)
    )


def test_block_hashes_cover_full_blocks_and_chain_the_prefix() -> None:
    words = [f"t{i}" for i in range(3 * BLOCK_SIZE + 5)]
    hashes = prompt_block_hashes(words)
    assert len(hashes) == 3
    assert prompt_block_hashes(words[: 2 * BLOCK_SIZE]) == hashes[:2]
    # the same block after a different prefix is a different block
    shifted = prompt_block_hashes(["t999999", *words[1:]])
    assert shifted[1] != hashes[1]


def test_free_queue_evicts_the_least_recently_freed_tail_first() -> None:
    pool = BlockPool(num_blocks=4, enable_caching=True)
    a = pool.allocate(2)
    assert a is not None
    pool.register(a[0], 11)
    pool.register(a[1], 12)
    pool.free(a)  # tail first: a[1] is evicted before a[0]
    assert pool.cached_prefix((11, 12), 2) == a
    b = pool.allocate(3)  # 2 empty blocks, then the head of the free queue: a[1]
    assert b is not None and a[1] in b
    assert pool.cached_prefix((11, 12), 2) == [a[0]]
    assert pool.allocate(2) is None  # only a[0] is left


def test_a_repeated_prompt_prefills_only_its_last_block_and_is_faster() -> None:
    replay = ClosedLoopReplay(_config())
    first = replay.run([_prompt(3, 1000)], concurrency=1, duration_s=60)
    again = replay.run([_prompt(3, 1000)], concurrency=1, duration_s=60)
    stats = replay.engine.stats
    # 1000 tokens = 62 full blocks + 8 tokens: all 62 blocks hit, the last 8 tokens prefill
    assert stats.prefix_hits == 62 * BLOCK_SIZE
    assert stats.prefix_queries == 2000
    ttft = [r.token_times_s[0] - r.send_s for r in (*first, *again)]
    assert ttft[1] < 0.5 * ttft[0]


def test_without_prefix_caching_nothing_is_reused() -> None:
    replay = ClosedLoopReplay(_config(caching=False))
    replay.run([_prompt(3, 1000)] * 2, concurrency=1, duration_s=60)
    assert replay.engine.stats.prefix_hits == 0


def test_replay_stops_sending_at_the_duration_and_drains() -> None:
    replay = ClosedLoopReplay(_config(max_num_seqs=4))
    requests = [_prompt(10 * i, 200) for i in range(1000)]
    traced = replay.run(requests, concurrency=4, duration_s=0.5)
    start_s = traced[0].send_s
    assert 4 < len(traced) < 1000
    assert max(t.send_s for t in traced) < start_s + 0.5
    assert traced and all(len(t.token_times_s) == 4 for t in traced)
    assert [t.index for t in sorted(traced, key=lambda t: t.send_s)][:4] == [0, 1, 2, 3]
    assert not replay.engine.has_work()
    assert replay.energy_j(start_s, replay.now_s) > 0


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    replay = ClosedLoopReplay(_config())
    replay.run([_prompt(3, 4 * BLOCK_SIZE)] * 2, concurrency=1, duration_s=60)
    # 4 full blocks, but the last token must be computed: only 3 blocks can hit
    assert replay.engine.stats.prefix_hits == 3 * BLOCK_SIZE


def test_each_freed_stream_waits_its_turnaround_in_order_then_the_last_one() -> None:
    replay = ClosedLoopReplay(_config())
    requests = [_prompt(10 * i, 40) for i in range(5)]
    traced = replay.run(requests, concurrency=1, duration_s=60, turnarounds_s=(0.01, 0.03))
    waits = [b.send_s - a.token_times_s[-1] for a, b in pairwise(traced)]
    assert [round(w, 9) for w in waits] == [0.01, 0.03, 0.03, 0.03]
