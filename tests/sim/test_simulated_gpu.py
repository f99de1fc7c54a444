"""The simulated GPU (`jouletune.gpu.simulated`): power cap, clock throttling, exact energy."""

from __future__ import annotations

import itertools

import pytest

from jouletune.gpu import Gpu, GpuError
from jouletune.gpu.simulated import GPU_CATALOG, KernelWork, SimulatedGpu, gpu_model, plan_step
from jouletune.models import model_arch
from jouletune.sim import DEFAULT_PERF, BatchShape, step_work

H100 = gpu_model("h100-80gb")
LLAMA_8B = model_arch("meta-llama/Llama-3.1-8B-Instruct")


def _prefill(tokens: int = 8192) -> KernelWork:
    """A compute-bound step: one big chunked-prefill batch."""
    batch = BatchShape(
        num_tokens=tokens,
        num_seqs=16,
        num_sampled=16,
        context_tokens=0,
        attention_pairs=16 * (tokens // 16) * (tokens // 16 + 1) / 2,
    )
    return step_work(arch=LLAMA_8B, gpu=H100, tp=1, batch=batch, perf=DEFAULT_PERF)


def _decode(seqs: int = 8) -> KernelWork:
    """A memory-bound step: a few sequences decoding one token each."""
    batch = BatchShape(
        num_tokens=seqs,
        num_seqs=seqs,
        num_sampled=seqs,
        context_tokens=seqs * 600,
        attention_pairs=seqs * 600.0,
    )
    return step_work(arch=LLAMA_8B, gpu=H100, tp=1, batch=batch, perf=DEFAULT_PERF)


class _Clock:
    def __init__(self, t_s: float = 1000.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


def test_satisfies_the_gpu_protocol_and_reports_its_range() -> None:
    gpu = SimulatedGpu(model=H100, index=3)
    assert isinstance(gpu, Gpu)
    sample = gpu.sample()
    assert (sample.index, sample.name) == (3, "NVIDIA H100 80GB HBM3")
    assert sample.power_limit_w == 700.0
    rng = gpu.power_limit_range()
    assert (rng.min_w, rng.max_w, rng.default_w) == (200.0, 700.0, 700.0)


def test_out_of_range_limit_raises_gpu_error() -> None:
    gpu = SimulatedGpu(model=H100, index=0)
    with pytest.raises(GpuError, match="outside"):
        gpu.set_power_limit_w(150.0)
    with pytest.raises(GpuError, match="outside"):
        gpu.set_power_limit_w(float("nan"))
    assert gpu.power_limit_w == 700.0


def test_unknown_gpu_lists_the_catalog() -> None:
    with pytest.raises(ValueError, match="h100-80gb") as err:
        gpu_model("b999")
    assert all(key in str(err.value) for key in GPU_CATALOG)


def test_uncapped_prefill_draws_more_than_the_cap_and_decode_less() -> None:
    prefill = plan_step(H100, _prefill(), limit_w=10_000.0, idle_w=H100.idle_loaded_w)
    decode = plan_step(H100, _decode(), limit_w=10_000.0, idle_w=H100.idle_loaded_w)
    # Without a cap, a full prefill would exceed the H100's 700 W (the real GPU throttles
    # there: README of the calibration); one decode sequence stays far below.
    assert prefill.power_w > 700.0
    assert decode.power_w < 500.0


def test_binding_cap_slows_compute_bound_steps_far_more_than_memory_bound() -> None:
    idle = H100.idle_loaded_w
    slow = {}
    for name, work in (("prefill", _prefill()), ("decode", _decode())):
        free = plan_step(H100, work, limit_w=700.0, idle_w=idle)
        capped = plan_step(H100, work, limit_w=300.0, idle_w=idle)
        assert capped.capped and capped.power_w <= 300.0 + 1e-6
        assert capped.sm_clock_hz < free.sm_clock_hz
        slow[name] = capped.duration_s / free.duration_s
    # at 300 W a full prefill runs ~1.5x longer than at 700 W; decode barely notices
    assert slow["prefill"] > 1.3
    assert slow["decode"] < 1.1
    assert slow["prefill"] > slow["decode"] + 0.25


def test_cap_that_does_not_bind_changes_nothing() -> None:
    work = _decode(1)
    at_700 = plan_step(H100, work, limit_w=700.0, idle_w=H100.idle_loaded_w)
    at_600 = plan_step(H100, work, limit_w=600.0, idle_w=H100.idle_loaded_w)
    assert not at_600.capped
    assert at_600 == at_700


def test_energy_counter_is_monotonic_and_equals_the_integral_of_power() -> None:
    clock = _Clock()
    gpu = SimulatedGpu(model=H100, index=0, clock=clock)
    gpu.set_loaded(True, at_s=clock.t_s)
    t_s = clock.t_s
    segments: list[tuple[float, float, float]] = []  # (start, end, power)
    for i in range(40):
        if i == 20:
            gpu.set_power_limit_w(250.0)
        gap_s = 0.013 if i % 5 == 0 else 0.0  # idle gaps at the loaded idle power
        if gap_s:
            segments.append((t_s, t_s + gap_s, H100.idle_loaded_w))
            t_s += gap_s
        outcome = gpu.run_step(_prefill(2048) if i % 3 == 0 else _decode(), start_s=t_s)
        segments.append((t_s, t_s + outcome.duration_s, outcome.power_w))
        t_s += outcome.duration_s
    clock.t_s = t_s
    # exact integral of the piecewise-constant power
    expected_j = sum((b - a) * p for a, b, p in segments)
    assert gpu.energy_between(segments[0][0], t_s) == pytest.approx(expected_j, rel=1e-9)
    # monotonic, and the counter between any two instants is the integral over them
    start_s = segments[0][0]
    readings = [gpu.energy_at(start_s + k * (t_s - start_s) / 997) for k in range(998)]
    assert len(readings) > 1 and all(b >= a for a, b in itertools.pairwise(readings))
    mid_a, mid_b = start_s + 0.1, t_s - 0.05
    part = sum(max(0.0, min(b, mid_b) - max(a, mid_a)) * p for a, b, p in segments)
    assert gpu.energy_between(mid_a, mid_b) == pytest.approx(part, rel=1e-9)
    # the sample's counter is the same integral, read at the clock's now
    assert gpu.sample().energy_j == pytest.approx(gpu.energy_at(t_s))


def test_sample_averages_power_over_the_last_second() -> None:
    clock = _Clock()
    gpu = SimulatedGpu(model=H100, index=0, clock=clock)
    gpu.set_loaded(True, at_s=clock.t_s)
    clock.t_s += 5.0
    idle = gpu.sample()
    assert idle.power_w == pytest.approx(H100.idle_loaded_w)
    assert idle.utilization_ratio == 0.0
    t_s = clock.t_s
    while t_s < clock.t_s + 1.5:
        t_s += gpu.run_step(_decode(), start_s=t_s).duration_s
    clock.t_s = t_s
    busy = gpu.sample()
    assert busy.power_w > idle.power_w + 100
    assert busy.utilization_ratio is not None and busy.utilization_ratio > 0.8
