"""The simulator on models from their config.json: FP8 GEMMs at the FP8 rate, MoE steps that
read the experts a batch touches (energy between the active and the total dense model), MLA
and sliding-window KV caches, and a sim-server serving a local model directory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from jouletune.gpu.simulated import SimulatedGpu, gpu_model
from jouletune.models import ModelArch, experts_touched, parse_config
from jouletune.sim import DEFAULT_PERF, BatchShape, EngineConfig, run_closed_loop, step_work
from jouletune.sim._perf import kv_bytes_per_token_per_rank, kv_cache_tokens
from jouletune.sim.cli import build_config, parse_args
from tests.models.published import arch, config
from tests.procs import free_port, jouletune_process

H100 = gpu_model("h100-80gb")
A100 = gpu_model("a100-80gb")


def _prefill(tokens: int = 8192) -> BatchShape:
    return BatchShape(
        num_tokens=tokens,
        num_seqs=8,
        num_sampled=8,
        context_tokens=0,
        attention_pairs=8 * (tokens // 8) * (tokens // 8 + 1) / 2,
    )


def _decode(seqs: int, context: int = 768) -> BatchShape:
    return BatchShape(
        num_tokens=seqs,
        num_seqs=seqs,
        num_sampled=seqs,
        context_tokens=seqs * context,
        attention_pairs=float(seqs * (context + 1)),
    )


def test_fp8_gemms_run_at_the_fp8_rate_where_the_gpu_has_one() -> None:
    bf16, fp8 = arch("qwen3-32b"), arch("qwen3-32b-fp8")

    def linear_compute_s(a: ModelArch, gpu: Any) -> float:
        work = step_work(arch=a, gpu=gpu, tp=1, batch=_prefill(), perf=DEFAULT_PERF)
        return work.groups[0][1]

    # H100: decoder GEMMs at 1979 instead of 989 TFLOP/s; the LM head stays bf16.
    assert linear_compute_s(fp8, H100) / linear_compute_s(bf16, H100) == pytest.approx(
        0.5, abs=0.01
    )
    # A100 has no FP8 tensor cores: vLLM's weight-only kernels multiply in bf16.
    assert linear_compute_s(fp8, A100) == pytest.approx(linear_compute_s(bf16, A100))
    # Decode is memory-bound: the weight-read time follows the bytes (LM head still bf16).
    mem = [
        step_work(arch=a, gpu=H100, tp=1, batch=_decode(8), perf=DEFAULT_PERF).groups[0][0]
        for a in (bf16, fp8)
    ]
    assert mem[1] / mem[0] == pytest.approx(fp8.step_weight_bytes / bf16.step_weight_bytes)
    assert mem[1] / mem[0] < 0.53


def test_mxfp4_experts_of_gpt_oss(tmp_path: Path) -> None:
    a = arch("gpt-oss-120b")
    assert a.weights.name == "mxfp4 experts"
    assert a.weights.bytes_per_param(a.weights.expert_quantized) == 4.25 / 8
    assert a.weights.attention_quantized == 0.0  # attention, router, embeddings stay bf16
    assert a.weight_bytes == pytest.approx(65e9, rel=0.02)  # "fits a single 80 GB GPU"
    (tmp_path / "config.json").write_text(json.dumps(config("gpt-oss-120b")))
    engine = build_config(parse_args([str(tmp_path), "--max-model-len", "8192"]))  # one H100
    assert engine.arch.num_params == a.num_params


# --- the MoE step ---------------------------------------------------------------------------


def test_experts_touched_by_a_batch() -> None:
    assert experts_touched(128, 8, 1) == pytest.approx(8)
    assert experts_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75**2))
    assert experts_touched(128, 8, 8192) == pytest.approx(128)
    counts = [experts_touched(64, 6, n) for n in range(1, 200)]
    assert counts == sorted(counts) and counts[-1] < 64


def test_a_moe_step_reads_touched_experts_and_computes_with_active_parameters() -> None:
    a = arch("qwen3-30b-a3b")
    bw = H100.memory_bandwidth_bytes_s * DEFAULT_PERF.weight_bw_efficiency
    flops = H100.bf16_dense_flops * DEFAULT_PERF.gemm_efficiency
    one = step_work(arch=a, gpu=H100, tp=1, batch=_decode(1), perf=DEFAULT_PERF)
    # One token: attention, router, norms, LM head and its k experts, once each.
    assert one.groups[0][0] * bw == pytest.approx(2 * (a.active_layer_params + a.lm_head_params))
    big = step_work(arch=a, gpu=H100, tp=1, batch=_prefill(), perf=DEFAULT_PERF)
    assert big.groups[0][0] * bw == pytest.approx(2 * (a.layer_params + a.lm_head_params))
    # Flops: 2 per active parameter per token, plus the LM head for the sampled tokens.
    expected = 2 * a.active_layer_params * 8192 + 2 * a.lm_head_params * 8
    assert big.groups[0][1] * flops == pytest.approx(expected)
    # Each rank of TP=4 reads a quarter of the same.
    tp4 = step_work(arch=a, gpu=H100, tp=4, batch=_decode(1), perf=DEFAULT_PERF)
    assert tp4.groups[0][0] == pytest.approx(one.groups[0][0] / 4)


def _dense_like(a: ModelArch, experts: int) -> ModelArch:
    """The dense model with `a`'s attention and `experts` of its experts' worth of MLP in every
    layer: `experts_per_token` gives its active parameter count (less the router),
    `num_experts` its total."""
    assert a.moe is not None and a.moe.num_layers == a.num_layers
    size = experts * a.moe.expert_intermediate_size + a.moe.shared_intermediate_size
    return dataclasses.replace(a, hf_id=f"{a.hf_id}-dense", moe=None, intermediate_size=size)


def _decode_j_per_token(a: ModelArch, gpu: Any, seqs: int) -> float:
    work = step_work(arch=a, gpu=gpu, tp=1, batch=_decode(seqs), perf=DEFAULT_PERF)
    simulated = SimulatedGpu(model=gpu, index=0)
    simulated.set_loaded(True)
    outcome = simulated.plan_step(work)
    return outcome.power_w * outcome.duration_s / seqs


@pytest.mark.parametrize(
    ("name", "gpu_key"),
    [
        ("qwen3-30b-a3b", "h100-80gb"),
        ("qwen3-30b-a3b-fp8", "h100-80gb"),
        ("mixtral-8x7b", "h200-141gb"),
    ],
)
def test_moe_decode_energy_lies_between_its_active_and_total_dense_models(
    name: str, gpu_key: str
) -> None:
    gpu = gpu_model(gpu_key)
    a = arch(name)
    assert a.moe is not None
    active = _dense_like(a, a.moe.experts_per_token)
    total = _dense_like(a, a.moe.num_experts)
    assert total.num_params == pytest.approx(a.num_params, rel=1e-3)
    assert (
        active.num_params + a.num_layers * a.router_params == a.active_params + a.embedding_params
    )
    for seqs in (1, 4, 16, 64, 256, 1024):
        lo, moe, hi = (_decode_j_per_token(m, gpu, seqs) for m in (active, a, total))
        assert lo < moe < hi, (seqs, lo, moe, hi)


@pytest.mark.parametrize(
    ("name", "gpu_key"), [("qwen3-30b-a3b", "h100-80gb"), ("mixtral-8x7b", "h200-141gb")]
)
def test_moe_closed_loop_energy_lies_between_its_active_and_total_dense_models(
    name: str, gpu_key: str
) -> None:
    gpu = gpu_model(gpu_key)
    a = arch(name)
    assert a.moe is not None

    def j_per_token(m: ModelArch, clients: int) -> float:
        engine = EngineConfig(
            arch=m,
            gpu=gpu,
            tensor_parallel_size=1,
            max_num_seqs=256,
            max_num_batched_tokens=8192,
            max_model_len=4096,
            gpu_memory_utilization=0.92,
            perf=DEFAULT_PERF,
        )
        result = run_closed_loop(
            engine, concurrency=clients, input_len=512, output_len=256, window_s=10
        )
        return result.j_per_output_token

    for clients in (1, 16, 64):
        lo, moe, hi = (
            j_per_token(m, clients)
            for m in (_dense_like(a, a.moe.experts_per_token), a, _dense_like(a, a.moe.num_experts))
        )
        assert lo < moe < hi, (clients, lo, moe, hi)


# --- KV caches ----------------------------------------------------------------------------


def test_mla_caches_one_latent_per_token_on_every_rank() -> None:
    a = arch("deepseek-v2-lite")
    assert a.kv_bytes_per_token == 27 * (512 + 64) * 2
    assert kv_bytes_per_token_per_rank(a, 2) == a.kv_bytes_per_token  # replicated, not split
    assert a.attention_flops_per_token_pair == 2 * 27 * 16 * (192 + 128)


def test_sliding_window_layers() -> None:
    a = arch("gpt-oss-20b")
    assert (a.sliding_window, a.num_sliding_layers) == (128, 12)
    # vLLM pools 12 + 12 layers as two groups of 12: a block holds 12 layers' worth.
    assert a.kv_pool_bytes_per_token == 12 * 2 * 8 * 64 * 2
    tokens = kv_cache_tokens(arch=a, gpu=H100, tp=1, gpu_memory_utilization=0.92, perf=DEFAULT_PERF)
    free = H100.memory_bytes * 0.92 - a.weight_bytes - DEFAULT_PERF.activation_reserve_bytes
    assert tokens == int(free // a.kv_pool_bytes_per_token)
    # Long contexts: the sliding half reads 128 tokens a sequence, the full half all of them.
    long = step_work(arch=a, gpu=H100, tp=1, batch=_decode(16, 100_000), perf=DEFAULT_PERF)
    full_only = dataclasses.replace(a, sliding_window=None, num_sliding_layers=0)
    full = step_work(arch=full_only, gpu=H100, tp=1, batch=_decode(16, 100_000), perf=DEFAULT_PERF)
    assert long.groups[1][0] / full.groups[1][0] == pytest.approx((100_001 + 128) / 2 / 100_001)
    # Mistral-style: a window on every layer; none where it is at least the context.
    mistral = {**config("llama-3.1-8b"), "model_type": "mistral", "sliding_window": 4096}
    assert parse_config(mistral, "m").num_sliding_layers == 32
    assert parse_config(config("qwen2.5-32b"), "q").num_sliding_layers == 0


def test_sim_server_serves_a_local_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config("qwen3-30b-a3b")))
    port = free_port()
    args = ["sim-server", str(tmp_path), "--port", str(port), "--host", "127.0.0.1"]
    args += ["--max-model-len", "2048", "--max-num-seqs", "4"]
    with jouletune_process(args, port=port, health_path="/health") as proc:
        with urllib.request.urlopen(proc.url + "/v1/models", timeout=10) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == [str(tmp_path)]
        body = {"model": str(tmp_path), "prompt": "t5 t6 t7", "max_tokens": 5}
        request = urllib.request.Request(
            proc.url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["usage"]["completion_tokens"] == 5


def test_sim_server_refuses_weights_that_do_not_fit_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config("mixtral-8x7b")))
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", "sim-server", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "(93.4 GB of bf16 weights) does not fit on 1 x h100-80gb" in lines[0]
