"""The engine model in simulated time: vLLM V1 scheduling bounds and the calibration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from jouletune.gpu.simulated import SimulatedGpu, gpu_model
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, Engine, EngineConfig, SimRequest, run_closed_loop
from jouletune.sim._engine import Step, StepListener
from jouletune.sim._kvcache import BLOCK_SIZE, BlockPool

CALIBRATION = (
    Path(__file__).resolve().parents[2]
    / "benchmarks"
    / "results"
    / "h100-calibration"
    / "h100_vllm0.24_llama8b-dummy_512in-256out.jsonl"
)


def _config(**overrides: object) -> EngineConfig:
    base = EngineConfig(
        arch=model_arch("meta-llama/Llama-3.1-8B-Instruct"),
        gpu=gpu_model("h100-80gb"),
        tensor_parallel_size=1,
        max_num_seqs=8,
        max_num_batched_tokens=2048,
        max_model_len=4096,
        gpu_memory_utilization=0.9,
        perf=DEFAULT_PERF,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class _Recorder(StepListener):
    def __init__(self) -> None:
        self.tokens: dict[str, list[float]] = {}
        self.finished: dict[str, float] = {}

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        self.tokens.setdefault(req.request_id, []).append(t_s)

    def on_finish(self, req: SimRequest, t_s: float) -> None:
        self.finished[req.request_id] = t_s


def _run(engine: Engine, *, max_steps: int = 100_000) -> list[Step]:
    """Step the engine on a virtual clock until every request finished."""
    steps: list[Step] = []
    t_s = 0.0
    while engine.has_work() and len(steps) < max_steps:
        step = engine.begin_step(t_s)
        if step is None:
            nxt = engine.next_ready_s()
            if nxt is None:  # the API server wrote the last chunks
                break
            assert nxt > t_s, "engine stuck with work it cannot schedule"
            t_s = nxt
            continue
        for gpu in engine.gpus:
            assert gpu.energy_at(step.end_s) >= gpu.energy_at(step.start_s)
        engine.finish_step(step)
        steps.append(step)
        t_s = step.end_s
    assert not engine.has_work(), "requests left after max_steps"
    return steps


def _engine(config: EngineConfig) -> Engine:
    gpus = [
        SimulatedGpu(model=config.gpu, index=i, clock=lambda: 0.0)
        for i in range(config.tensor_parallel_size)
    ]
    return Engine(config=config, gpus=gpus)


def _add(engine: Engine, listener: StepListener, n: int, *, prompt: int, out: int) -> None:
    for i in range(n):
        engine.add(
            SimRequest(
                request_id=f"r{i}",
                prompt_tokens=prompt,
                max_tokens=out,
                arrival_s=0.001 * i,
                listener=listener,
            )
        )


def test_batch_never_exceeds_max_num_seqs_nor_the_token_budget() -> None:
    engine = _engine(_config(max_num_seqs=8, max_num_batched_tokens=1024))
    rec = _Recorder()
    _add(engine, rec, 40, prompt=700, out=20)  # two prompts overflow the budget: chunks
    steps = _run(engine)
    assert max(s.batch.num_seqs for s in steps) == 8
    assert max(s.batch.num_tokens for s in steps) <= 1024
    assert any(s.batch.num_tokens == 1024 for s in steps), "budget never filled"
    assert len(rec.finished) == 40
    assert rec.tokens and all(len(t) == 20 for t in rec.tokens.values())


def test_long_prompt_is_prefilled_in_chunks_of_the_budget() -> None:
    engine = _engine(_config(max_num_batched_tokens=512))
    rec = _Recorder()
    _add(engine, rec, 1, prompt=1500, out=4)
    steps = _run(engine)
    # 512 + 512 + 476 prompt tokens, the first token at the end of the third step, out of
    # the API server one chunk's time later
    assert [s.batch.num_tokens for s in steps[:3]] == [512, 512, 476]
    assert rec.tokens["r0"][0] == pytest.approx(steps[2].end_s + DEFAULT_PERF.api_chunk_s)
    assert len(steps) == 3 + 3


def test_full_kv_cache_preempts_and_recomputes_yet_every_token_arrives() -> None:
    config = _config(max_num_seqs=64, max_num_batched_tokens=4096)
    engine = _engine(config)
    # shrink the cache to 40 blocks (640 tokens): 8 requests of 100 + 60 tokens cannot all fit
    engine.num_blocks = 40
    engine.pool = BlockPool(num_blocks=40, enable_caching=True)
    rec = _Recorder()
    _add(engine, rec, 8, prompt=100, out=60)
    _run(engine)
    assert engine.stats.preemptions > 0
    assert len(rec.finished) == 8
    assert rec.tokens and all(len(t) == 60 for t in rec.tokens.values())
    assert engine.free_blocks == 40
    assert engine.kv_usage() == 0.0


def test_kv_cache_size_matches_the_real_server() -> None:
    # vLLM 0.24 on the H100 reported num_gpu_blocks=28957 (kv_cache_size_tokens=463312) for
    # this model at gpu_memory_utilization=0.92 (cache_config_info in the exposition).
    engine = _engine(_config(gpu_memory_utilization=0.92))
    assert engine.num_blocks * BLOCK_SIZE == pytest.approx(463312, rel=0.001)


def test_truth_counts_every_emitted_token() -> None:
    engine = _engine(_config())
    rec = _Recorder()
    _add(engine, rec, 5, prompt=64, out=30)
    steps = _run(engine)
    last_s = max(t for times in rec.tokens.values() for t in times)
    assert engine.tokens_emitted_by(last_s) == 150
    assert engine.tokens_emitted_by(steps[0].start_s) == 0
    mid = steps[len(steps) // 2].end_s
    emitted_by_mid = sum(1 for times in rec.tokens.values() for t in times if t <= mid)
    assert engine.tokens_emitted_by(mid) == emitted_by_mid
    records = engine.records_finished_between(0.0, last_s)
    assert sorted(r.request_id for r in records) == [f"r{i}" for i in range(5)]
    assert records and all(r.output_tokens == 30 for r in records)


def _real() -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines()]
    return {int(r["concurrency"]): r for r in rows}


@pytest.mark.parametrize("concurrency", [1, 8, 64, 256])
def test_within_15_percent_of_the_h100_on_energy_per_token_and_itl(concurrency: int) -> None:
    real = _real()[concurrency]
    config = _config(
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        max_model_len=2048,
        gpu_memory_utilization=0.92,
    )
    # the 25 s window of the real sweep: the closed loop moves in waves, so short windows vary
    sim = run_closed_loop(
        config, concurrency=concurrency, input_len=512, output_len=256, window_s=25
    )
    assert sim.j_per_output_token == pytest.approx(real["j_per_output_token"], rel=0.15)
    assert sim.itl_ms_p50 == pytest.approx(real["itl_ms_p50"], rel=0.15)


def test_lower_power_limit_cuts_power_and_slows_the_busy_server() -> None:
    config = _config(
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        max_model_len=2048,
        gpu_memory_utilization=0.92,
    )
    free = run_closed_loop(config, concurrency=128, input_len=512, output_len=256, window_s=8)
    capped = run_closed_loop(
        config, concurrency=128, input_len=512, output_len=256, window_s=8, power_limit_w=400.0
    )
    assert capped.power_w <= 400.0 + 1e-6 < free.power_w
    assert capped.output_tok_s < free.output_tok_s
    assert capped.sm_clock_mhz_mean < free.sm_clock_mhz_mean


def test_truth_older_than_the_retention_is_dropped() -> None:
    engine = _engine(_config())
    rec = _Recorder()
    _add(engine, rec, 1, prompt=16, out=4000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("jouletune.sim._engine.TRUTH_RETENTION_S", 1.0)
        mp.setattr("jouletune.sim._engine._PRUNE_BATCH", 10)
        steps = _run(engine)
    end_s = steps[-1].end_s
    kept = engine.tokens_emitted_by(end_s) - engine.tokens_emitted_by(end_s - 0.5)
    assert kept == sum(1 for t in rec.tokens["r0"] if end_s - 0.5 < t <= end_s)
    assert len(engine._emit_times_s) < len(steps) / 2
