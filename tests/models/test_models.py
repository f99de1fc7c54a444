"""Models from their config.json: parameter counts of published architectures, MoE layouts,
FP8 and MXFP4 weight formats, one-line refusals, and where a config comes from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from jouletune.models import MODEL_CATALOG, ModelArch, model_arch, parse_config
from jouletune.models._hub import load_config
from tests.models.published import arch, config

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
    moe = parse_config(sparse, "sparse").moe  # odd layers, less layer 1
    assert moe is not None and moe.num_layers == 23
    qwen2_moe = {  # Qwen1.5-MoE-A2.7B's fields: 60 experts, top-4, a gated shared expert
        **config("qwen3-30b-a3b"),
        "model_type": "qwen2_moe",
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
    }
    shared = parse_config(qwen2_moe, "qwen2-moe")
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


def test_modules_left_unquantized_stay_bf16() -> None:
    def fp8(skip: list[str]) -> ModelArch:
        quant = {"quant_method": "fp8", "modules_to_not_convert": skip}
        return parse_config({**config("qwen3-30b-a3b"), "quantization_config": quant}, "q")

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
    w8a8 = parse_config(
        {**config("llama-3.1-8b"), "quantization_config": {**quant, "ignore": ["lm_head"]}}, "ct"
    )
    assert (w8a8.weights.name, w8a8.weights.fp8_compute) == ("fp8", True)
    group["input_activations"] = None
    w8a16 = parse_config({**config("llama-3.1-8b"), "quantization_config": quant}, "ct")
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
        parse_config({**config("qwen3-32b"), **change}, "org/some-model")
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
