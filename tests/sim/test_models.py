"""Models from their config.json: parameter counts of published architectures, MoE expert
reads, FP8 and MXFP4 weights, MLA and sliding-window KV caches, and one-line refusals.

The configs in `configs/` carry the architecture fields of each model's published
config.json (the copies named in /tmp/research/models.md §4: aiconfigurator-core 0.12.0's
`model_configs/`, or the rows of its tables for Qwen2.5-32B-Instruct and DeepSeek-V2-Lite).
"""

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
from jouletune.sim import (
    DEFAULT_PERF,
    BatchShape,
    EngineConfig,
    ModelArch,
    model_arch,
    run_closed_loop,
    step_work,
)
from jouletune.sim._hf_config import load_config
from jouletune.sim._models import MODEL_CATALOG
from jouletune.sim._perf import experts_touched, kv_bytes_per_token_per_rank, kv_cache_tokens
from jouletune.sim.cli import build_config, parse_args
from tests.procs import free_port, jouletune_process

CONFIGS = Path(__file__).resolve().parent / "configs"
H100 = gpu_model("h100-80gb")
A100 = gpu_model("a100-80gb")


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


def arch(name: str) -> ModelArch:
    return ModelArch.from_config(config(name), name)


# --- parameter counts ---------------------------------------------------------------------

# (config, stated total, stated active, whether the stated active count includes the input
# embedding, tolerance, source of the stated counts). Cards differ on the last point: the one
# that matches is used, and says so. Dense models' active count is their total.
STATED = [
    ("llama-3.1-8b", 8.0e9, None, True, 0.02, "Llama 3.1 card: 8B"),
    ("llama-3.1-70b", 70e9, None, True, 0.02, "Llama 3.1 card: 70B"),
    ("qwen2.5-32b", 32.5e9, None, True, 0.02, "Qwen2.5-32B-Instruct card: 32.5B"),
    ("qwen3-32b", 32.8e9, None, True, 0.02, "Qwen3-32B card: 32.8B"),
    # Both conventions are within 2% here (12.88B with the embedding, 12.75B without).
    ("mixtral-8x7b", 46.7e9, 12.9e9, True, 0.02, "Mixtral paper, arXiv 2401.04088"),
    # Without the embedding: 3.04B, 8% short; Qwen counts it.
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, True, 0.02, "Qwen3-30B-A3B card"),
    ("qwen3-235b-a22b", 235e9, 22e9, True, 0.02, "Qwen3-235B-A22B card"),
    # DeepSeek leaves the embedding out (V3: 36.6B without, 37.6B with). V2-Lite's "2.4B" has
    # two significant figures; the architecture gives 2.45B (+2.1%), hence 2.5% for it.
    ("deepseek-v2-lite", 15.7e9, 2.4e9, False, 0.025, "DeepSeek-V2-Lite card: 15.7B / 2.4B"),
    ("deepseek-v3", 671e9, 37e9, False, 0.02, "DeepSeek-V3 report, arXiv 2412.19437"),
    ("gpt-oss-20b", 20.9e9, 3.6e9, False, 0.02, "gpt-oss card, arXiv 2508.10925"),
    ("gpt-oss-120b", 116.8e9, 5.1e9, False, 0.02, "gpt-oss card, arXiv 2508.10925"),
]


@pytest.mark.parametrize(("name", "total", "active", "with_embedding", "tol", "source"), STATED)
def test_parameter_counts_match_the_published_ones(
    name: str, total: float, active: float | None, with_embedding: bool, tol: float, source: str
) -> None:
    a = arch(name)
    assert a.num_params == pytest.approx(total, rel=tol), source
    ours_active = a.active_params + (a.embedding_params if with_embedding else 0)
    if active is None:  # dense: every parameter is active
        assert a.moe is None and ours_active == a.num_params
    else:
        assert ours_active == pytest.approx(active, rel=tol), source


def test_non_embedding_count_of_qwen25_matches_its_card() -> None:
    a = arch("qwen2.5-32b")  # card: "31.0B non-embedding"
    assert a.num_params - a.embedding_params - a.lm_head_params == pytest.approx(31.0e9, rel=0.02)


def test_catalog_entries_are_the_published_configs() -> None:
    for name, entry in (
        ("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"),
        ("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct"),
        ("qwen3-32b", "Qwen/Qwen3-32B"),
    ):
        assert dataclasses.replace(arch(name), hf_id=entry) == MODEL_CATALOG[entry]
    llama = MODEL_CATALOG["meta-llama/Llama-3.1-8B-Instruct"]
    assert (llama.num_params, llama.weight_bytes) == (8_030_261_248, 16_060_522_496)


def test_moe_layouts_follow_each_familys_fields() -> None:
    qwen = arch("qwen3-30b-a3b").moe
    assert qwen is not None
    assert (qwen.num_experts, qwen.experts_per_token, qwen.num_layers) == (128, 8, 48)
    deepseek = arch("deepseek-v2-lite")
    assert deepseek.moe is not None  # first_k_dense_replace 1: layer 0 is dense
    assert (deepseek.moe.num_layers, deepseek.moe.shared_intermediate_size) == (26, 2 * 1408)
    sparse = {**config("qwen3-30b-a3b"), "decoder_sparse_step": 2, "mlp_only_layers": [1, 2]}
    moe = ModelArch.from_config(sparse, "sparse").moe  # odd layers, less layer 1
    assert moe is not None and moe.num_layers == 23
    qwen2_moe = {  # Qwen1.5-MoE-A2.7B's fields: 60 experts, top-4, a gated shared expert
        **config("qwen3-30b-a3b"),
        "model_type": "qwen2_moe",
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
    }
    shared = ModelArch.from_config(qwen2_moe, "qwen2-moe")
    assert shared.moe is not None and shared.moe.shared_expert_gate
    assert shared.router_params == 2048 * 61


# --- weight formats -----------------------------------------------------------------------


def test_fp8_halves_the_quantized_weights_and_keeps_the_kv_cache_bf16() -> None:
    bf16, fp8 = arch("qwen3-32b"), arch("qwen3-32b-fp8")
    assert (fp8.weights.name, fp8.weights.quant_bytes, fp8.weights.fp8_compute) == (
        "fp8",
        1.0,
        True,
    )
    linear = bf16.num_layers * (bf16.attention_params_per_layer + bf16.dense_mlp_params)
    # Every linear layer halves; embeddings, LM head and norms stay bf16 (vLLM's Fp8Config).
    assert bf16.weight_bytes - fp8.weight_bytes == linear
    assert fp8.step_weight_bytes == bf16.step_weight_bytes - linear
    assert 0.5 < fp8.weight_bytes / bf16.weight_bytes < 0.53
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token
    moe_bf16, moe_fp8 = arch("qwen3-30b-a3b"), arch("qwen3-30b-a3b-fp8")
    assert moe_fp8.expert_bytes_all_layers * 2 == moe_bf16.expert_bytes_all_layers
    assert moe_fp8.weights.attention_quantized == 1.0  # its skip list: norms and routers only


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


def test_modules_left_unquantized_stay_bf16() -> None:
    def fp8(skip: list[str]) -> ModelArch:
        quant = {"quant_method": "fp8", "modules_to_not_convert": skip}
        return ModelArch.from_config({**config("qwen3-30b-a3b"), "quantization_config": quant}, "q")

    w = fp8(["lm_head", "model.layers.0.mlp.gate", "model.layers.3.input_layernorm"]).weights
    assert (w.attention_quantized, w.mlp_quantized, w.expert_quantized) == (1.0, 1.0, 1.0)
    w = fp8(["model.layers.*.self_attn", "model.layers.0.mlp.experts"]).weights
    assert (w.attention_quantized, w.expert_quantized) == (0.0, 1.0 - 1 / 48)
    w = fp8(["re:.*self_attn.*", "model.layers.1.mlp", "model.layers.2.mlp"]).weights
    assert (w.attention_quantized, w.expert_quantized) == (0.0, 1.0 - 2 / 48)
    all_bf16 = fp8(["re:.*self_attn.*", "re:.*mlp.*"])
    assert all_bf16.weight_bytes == arch("qwen3-30b-a3b").weight_bytes


def test_compressed_tensors_and_modelopt_fp8(tmp_path: Path) -> None:
    # The shape llm-compressor writes for FP8_DYNAMIC (W8A8) and FP8 weight-only (W8A16);
    # written here, not copied from a published checkpoint.
    group: dict[str, Any] = {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "float", "dynamic": True},
    }
    quant = {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}
    w8a8 = ModelArch.from_config(
        {**config("llama-3.1-8b"), "quantization_config": {**quant, "ignore": ["lm_head"]}}, "ct"
    )
    assert (w8a8.weights.name, w8a8.weights.fp8_compute) == ("fp8", True)
    group["input_activations"] = None
    w8a16 = ModelArch.from_config({**config("llama-3.1-8b"), "quantization_config": quant}, "ct")
    assert (w8a16.weights.name, w8a16.weights.fp8_compute) == ("fp8 weight-only", False)
    assert w8a16.weight_bytes == w8a8.weight_bytes
    # nvidia/Llama-3.1-70B-Instruct-FP8: ModelOpt keeps its settings in hf_quant_config.json
    # (copied from research §4.3); vLLM reads it and makes the KV cache FP8 too.
    (tmp_path / "config.json").write_text(json.dumps(config("llama-3.1-70b")))
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps(
            {
                "producer": {"name": "modelopt", "version": "0.23.0"},
                "quantization": {
                    "quant_algo": "FP8",
                    "kv_cache_quant_algo": "FP8",
                    "exclude_modules": ["lm_head"],
                },
            }
        )
    )
    modelopt = model_arch(str(tmp_path))
    bf16 = arch("llama-3.1-70b")
    assert modelopt.weights.name == "fp8" and modelopt.kv_cache_bytes == 1
    assert modelopt.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert modelopt.weight_bytes < 0.52 * bf16.weight_bytes


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
    assert ModelArch.from_config(mistral, "m").num_sliding_layers == 32
    assert ModelArch.from_config(config("qwen2.5-32b"), "q").num_sliding_layers == 0


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"]},
            "model_type 'nemotron_h' (NemotronHForCausalLM) is not modelled",
        ),
        (
            {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"]},
            "model_type 'llama4'",
        ),
        (
            {"layer_types": ["linear_attention", "full_attention"] * 32},
            "layer type 'linear_attention' is not modelled",
        ),
        ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "quantization 'awq'"),
        (
            {
                "quantization_config": {
                    "quant_method": "compressed-tensors",
                    "config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}},
                }
            },
            "4-bit int weights is not modelled",
        ),
        (
            {"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}},
            "ModelOpt quant_algo 'NVFP4'",
        ),
        ({"torch_dtype": "float8_e4m3fn"}, "torch_dtype 'float8_e4m3fn' is not modelled"),
        ({"hidden_size": None}, "config.json lacks 'hidden_size'"),
        ({"num_attention_heads": "32"}, "'num_attention_heads' is '32', not a count"),
    ],
)
def test_unsupported_configs_are_refused_in_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        ModelArch.from_config({**config("qwen3-32b"), **change}, "org/some-model")
    text = str(err.value)
    assert message in text and "org/some-model" in text and "\n" not in text


# --- where a model comes from -------------------------------------------------------------


def test_a_local_directory_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config("mixtral-8x7b")))
    assert model_arch(str(tmp_path)).num_params == arch("mixtral-8x7b").num_params
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"the directory has no config\.json"):
        model_arch(str(empty))
    with pytest.raises(ValueError, match=r"not a directory holding config\.json"):
        model_arch(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a Hugging Face id"):
        model_arch("a/b/c")


def test_a_hugging_face_id_fetches_config_json_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    (tmp_path / "config.json").write_text(json.dumps(config("qwen3-30b-a3b")))
    asked: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        asked.append((repo_id, filename))
        if filename != "config.json":
            raise EntryNotFoundError(f"no {filename}")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    a = model_arch("Qwen/Qwen3-30B-A3B")
    assert a.hf_id == "Qwen/Qwen3-30B-A3B" and a.moe is not None
    assert asked == [
        ("Qwen/Qwen3-30B-A3B", "config.json"),
        ("Qwen/Qwen3-30B-A3B", "hf_quant_config.json"),
    ]

    def offline(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ValueError) as err:
        load_config("Qwen/Qwen3-30B-A3B", catalog=["x/y"])
    text = str(err.value)
    assert "unknown model 'Qwen/Qwen3-30B-A3B'" in text and "offline" in text and "x/y" in text
    assert "\n" not in text


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
