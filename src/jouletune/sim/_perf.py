"""Step-time model: the work one engine step puts on each tensor-parallel rank.

A step runs every decoder layer once over all tokens scheduled in it. Per rank:

* linear layers: read the rank's weights once (memory-bound part) and do
  2·active params/TP flops per token (compute-bound part); the LM head runs only for sampled
  tokens. Of a MoE layer's routed experts a step reads only those its tokens are routed to:
  with uniform routing, E·(1 − (1 − k/E)^n) of E experts for n tokens each picking k. FP8
  weights are read at one byte and, when their activations are FP8 too, multiplied at the
  GPU's FP8 tensor rate;
* attention: read the KV cache of every scheduled sequence's context (memory-bound part) and
  do the attention flops per (query, key) pair / TP (compute-bound part); sliding-window
  layers see at most the window of each sequence;
* all-reduce (TP > 1): two per layer over `interconnect_bytes_s`, a fixed latency each;
* host: fixed per-step scheduling cost plus a per-sequence cost (sampling, bookkeeping).

Each group takes max(memory time, compute time) — a roofline per kernel group — and the GPU
model (`jouletune.gpu.simulated`) stretches the compute part when a power cap lowers the
clock. Efficiencies (achieved fraction of peak) are fitted to the H100 calibration sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jouletune.gpu.simulated import GpuModel, KernelWork
from jouletune.models import ModelArch, experts_touched

__all__ = [
    "DEFAULT_PERF",
    "BatchShape",
    "PerfConstants",
    "kv_cache_tokens",
    "step_work",
]

_BF16_BYTES = 2  # activations on the interconnect


@dataclass(frozen=True, kw_only=True)
class PerfConstants:
    """Efficiencies and overheads of the serving engine; fitted values in docs/simulator.md.

    Attributes:
        weight_bw_efficiency: achieved fraction of peak DRAM bandwidth streaming weights.
        kv_bw_efficiency: achieved fraction of peak DRAM bandwidth reading the KV cache.
        gemm_efficiency: achieved fraction of peak bf16 flops in the linear layers.
        attention_efficiency: achieved fraction of peak bf16 flops in attention.
        host_step_s: per-step host time the GPU waits on (scheduler, launch), seconds.
        host_per_seq_s: per-sequence host time per step (sampling, output handling), seconds.
        frontend_s: fixed delay of a request's way from the client to the scheduler and of
            its first token's way back that does not occupy the API server's event loop
            (network, IPC, process wake-ups), seconds.
        api_request_s: API-server event-loop time to take in one request (HTTP parsing,
            validation, tokenization, hand-off to the engine core), seconds.
        api_chunk_s: API-server event-loop time per streamed chunk, i.e. per running request
            per engine step (detokenizing, building the SSE chunk, writing it), seconds.
        render_s_per_token: API-server time to render one prompt token, off the event loop,
            in vLLM's renderer thread, which renders one prompt at a time in arrival order,
            seconds.
        eager_launch_s: engine-core host time, from handing out one step's tokens to having
            launched the step after next, when that step is too large for a CUDA graph and
            is launched kernel by kernel (`jouletune.sim._engine`), seconds.
        eager_launch_per_token_s: what each prompt token that step prefills adds, seconds.
        eager_launch_per_seq_s: what each sequence that step decodes adds, seconds.
        activation_reserve_bytes: memory vLLM's profiling run keeps for activations, CUDA
            graphs and the non-torch allocator per GPU, bytes (not available to the KV cache).
    """

    weight_bw_efficiency: float
    kv_bw_efficiency: float
    gemm_efficiency: float
    attention_efficiency: float
    host_step_s: float
    host_per_seq_s: float
    frontend_s: float
    api_request_s: float
    api_chunk_s: float
    render_s_per_token: float
    eager_launch_s: float
    eager_launch_per_token_s: float
    eager_launch_per_seq_s: float
    activation_reserve_bytes: float


# Fitted to ../shared/calibration (H100, vLLM 0.24, Llama-3.1-8B shape); kv_bw_efficiency and
# host_per_seq_s refitted against benchmarks/results/h100-vllm, whose two context lengths
# separate the per-sequence cost from the per-context-token cost; see docs/simulator.md.
# gemm_efficiency refitted with the H100 power model's tensor_w: capped prefill steps were 5-14%
# too slow at too high a clock (ITL p99, SM clock, the matmul power check).
# frontend_s, api_request_s and api_chunk_s (the API-server model, sim/_frontend.py) fitted on
# the first 12-point sweep of benchmarks/results/h100-vllm by benchmarks/sim_frontend_fit.py.
# render_s_per_token measured, not fitted: the real API server renders a burst of 1024-token
# prompts 1.1 ms apart at 8 to 256 streams (benchmarks/h100_vllm/intake_timeline.py on
# benchmarks/results/h100-vllm/intake-a and intake-b).
# eager_launch_* measured, not fitted to any outcome: vLLM's own iteration log gives the
# engine core's host time between steps; before a step without a CUDA graph it is 16.12 ms +
# 0.37 µs per prefill token + 20.0 µs per decoding sequence (1593 intervals of 18 points at 8
# to 256 sequences on several machines of the pool, whose hosts differ: 16 ms at 128 streams
# on one, 21-29 ms on others; benchmarks/h100_vllm/engine_host_time.py), against 1.7-9.6 ms
# before a decode-only step.
DEFAULT_PERF = PerfConstants(
    weight_bw_efficiency=0.86,
    kv_bw_efficiency=0.85,
    gemm_efficiency=0.90,
    attention_efficiency=0.683,
    host_step_s=1.16e-3,
    host_per_seq_s=10e-6,
    frontend_s=8.2e-3,
    api_request_s=1.8e-3,
    api_chunk_s=48e-6,
    render_s_per_token=1.1e-6,
    eager_launch_s=16.12e-3,
    eager_launch_per_token_s=0.37e-6,
    eager_launch_per_seq_s=20.0e-6,
    activation_reserve_bytes=1.8913e9,
)


@dataclass(frozen=True, kw_only=True)
class BatchShape:
    """What one step computes, summed over its scheduled sequences.

    Attributes:
        num_tokens: new tokens (prefill chunks + one per decoding sequence).
        num_seqs: sequences scheduled.
        num_sampled: sequences that sample a token this step (decodes + finished prefills).
        context_tokens: tokens of KV cache attention reads (each sequence's context).
        attention_pairs: (query, key) pairs attention computes, causal.
    """

    num_tokens: int
    num_seqs: int
    num_sampled: int
    context_tokens: int
    attention_pairs: float


def step_work(
    *, arch: ModelArch, gpu: GpuModel, tp: int, batch: BatchShape, perf: PerfConstants
) -> KernelWork:
    """The work of one step on one of `tp` identical ranks."""
    bw = gpu.memory_bandwidth_bytes_s
    flops_peak = gpu.bf16_dense_flops
    # Linear layers: decoder weights plus the LM head (read once per step); of the routed
    # experts, those the step's tokens touch.
    expert_bytes = 0.0
    if arch.moe is not None:
        touched = experts_touched(arch.num_experts, arch.experts_per_token, batch.num_tokens)
        expert_bytes = touched * arch.expert_bytes_all_layers
    weight_bytes = (arch.step_weight_bytes + expert_bytes) / tp
    linear_flops = (
        2.0 * arch.active_layer_params * batch.num_tokens
        + 2.0 * arch.lm_head_params * batch.num_sampled
    ) / tp
    linear_s = linear_flops / (flops_peak * perf.gemm_efficiency)
    if gpu.fp8_dense_flops is not None and arch.fp8_active_layer_params:
        fp8_flops = 2.0 * arch.fp8_active_layer_params * batch.num_tokens / tp
        linear_s = (linear_flops - fp8_flops) / (flops_peak * perf.gemm_efficiency) + fp8_flops / (
            gpu.fp8_dense_flops * perf.gemm_efficiency
        )
    kv_bytes, attn_flops = _attention_work(arch, tp, batch)
    groups = (
        (weight_bytes / (bw * perf.weight_bw_efficiency), linear_s),
        (
            kv_bytes / (bw * perf.kv_bw_efficiency),
            attn_flops / (flops_peak * perf.attention_efficiency),
        ),
    )
    return KernelWork(
        groups=groups,
        fixed_gpu_s=_allreduce_s(arch, gpu, tp, batch.num_tokens),
        host_s=perf.host_step_s + perf.host_per_seq_s * batch.num_seqs,
        bytes_moved=weight_bytes + kv_bytes,
        flops=linear_flops + attn_flops,
    )


def _attention_work(arch: ModelArch, tp: int, batch: BatchShape) -> tuple[float, float]:
    """(KV bytes read, attention flops) of the step on one rank."""
    tokens = batch.context_tokens + batch.num_tokens
    if not arch.num_sliding_layers:
        kv_bytes = kv_bytes_per_token_per_rank(arch, tp) * tokens
        return kv_bytes, arch.attention_flops_per_token_pair * batch.attention_pairs / tp
    # A sliding-window layer reads at most `window` tokens of each sequence and each query
    # attends to at most `window` keys. The batch shape has sums only, so this bounds
    # Σ min(c_i, W) by min(Σ c_i, W·s): exact once every context exceeds the window.
    window = arch.sliding_window or 0
    full = arch.num_layers - arch.num_sliding_layers
    sliding = arch.num_sliding_layers
    kv_tokens = full * tokens + sliding * min(tokens, window * batch.num_seqs)
    pairs = full * batch.attention_pairs + sliding * min(
        batch.attention_pairs, float(window * batch.num_tokens)
    )
    kv_bytes = kv_bytes_per_token_per_rank(arch, tp) / arch.num_layers * kv_tokens
    return kv_bytes, arch.attention_flops_per_token_pair / arch.num_layers * pairs / tp


def _allreduce_s(arch: ModelArch, gpu: GpuModel, tp: int, num_tokens: int) -> float:
    if tp == 1:
        return 0.0
    # Two all-reduces per layer (after attention and after the MLP); ring cost 2(tp-1)/tp.
    message_bytes = num_tokens * arch.hidden_size * _BF16_BYTES
    per_call_s = (
        gpu.allreduce_latency_s + 2 * (tp - 1) / tp * message_bytes / gpu.interconnect_bytes_s
    )
    return 2 * arch.num_layers * per_call_s


def kv_bytes_per_token_per_rank(arch: ModelArch, tp: int) -> float:
    """KV bytes per token on one rank, all layers. KV heads are split across ranks
    (replicated if fewer); MLA's latent serves every head, so each rank holds all of it."""
    return _per_rank(arch, tp, arch.kv_bytes_per_token)


def _per_rank(arch: ModelArch, tp: int, kv_bytes: int) -> float:
    if arch.mla is not None:
        return float(kv_bytes)
    heads_per_rank = max(1.0, arch.num_kv_heads / tp)
    return kv_bytes * heads_per_rank / arch.num_kv_heads


def kv_cache_tokens(
    *, arch: ModelArch, gpu: GpuModel, tp: int, gpu_memory_utilization: float, perf: PerfConstants
) -> int:
    """Tokens the KV cache holds: (memory × utilization − weights/TP − activations) / KV bytes
    of a token in vLLM's pool (`ModelArch.kv_pool_bytes_per_token`).

    Returns 0 or less when the weights do not fit (the caller reports the error).
    """
    budget = gpu.memory_bytes * gpu_memory_utilization
    free = budget - arch.weight_bytes / tp - perf.activation_reserve_bytes
    return math.floor(free / _per_rank(arch, tp, arch.kv_pool_bytes_per_token))
