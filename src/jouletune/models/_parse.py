"""Reading a `ModelArch` from a Hugging Face `config.json` dict.

Dense llama/mistral/qwen2/qwen3, MoE mixtral/qwen2_moe/qwen3_moe/gpt_oss, and
deepseek_v2/v3 (MoE with MLA attention), with their weight formats as vLLM 0.24 serves them
(bf16, FP8, compressed-tensors FP8, ModelOpt FP8, MXFP4 experts); anything else is refused
with a one-line ValueError naming what is not modelled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jouletune.models._arch import MlaShape, ModelArch, MoeShape, WeightFormat

__all__ = ["SUPPORTED_MODEL_TYPES", "parse_config"]

# bf16 and fp16 both take 2 bytes; vLLM serves float32 checkpoints in bf16 on CUDA
# (config/model.py _resolve_auto_dtype: "Downcast for float32 models").
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16"}
# MXFP4 (OCP microscaling): 4-bit values plus one 8-bit E8M0 scale per block of 32.
_MXFP4_BYTES = (4 * 32 + 8) / 32 / 8

_DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "deepseek_v2", "deepseek_v3")
SUPPORTED_MODEL_TYPES = _DENSE_TYPES + _MOE_TYPES
_LAYER_TYPES = ("full_attention", "sliding_attention")


class _Config:
    """Typed reads of a config.json dict; every failure is a one-line ValueError."""

    def __init__(self, config: Mapping[str, Any], name: str) -> None:
        self.raw = config
        self.name = name

    def error(self, what: str) -> ValueError:
        return ValueError(f"model {self.name}: {what}")

    def count(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key)
        if value is None:
            if default is None:
                raise self.error(f"config.json lacks {key!r}")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(f"config.json's {key!r} is {value!r}, not a count")
        return value

    def positive(self, key: str, default: int | None = None) -> int:
        value = self.count(key, default)
        if value == 0:
            raise self.error(f"config.json's {key!r} is 0")
        return value

    def ints(self, key: str) -> list[int]:
        value = self.raw.get(key) or []
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise self.error(f"config.json's {key!r} is {value!r}, not a list of layer indices")
        return value


def parse_config(
    config: Mapping[str, Any], name: str, *, quant_config: Mapping[str, Any] | None = None
) -> ModelArch:
    """Read a Hugging Face `config.json` dict; `quant_config` is a ModelOpt
    `hf_quant_config.json`, used when config.json has no `quantization_config` (as vLLM
    does). Raises ValueError (one line, naming `name`) for what is not modelled."""
    c = _Config(config, name)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = config.get("architectures")
        arch = f" ({archs[0]})" if isinstance(archs, list) and archs else ""
        raise c.error(
            f"model_type {model_type!r}{arch} is not modelled; the simulator reads "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    hidden = c.positive("hidden_size")
    layers = c.positive("num_hidden_layers")
    heads = c.positive("num_attention_heads")
    moe = _moe_shape(c, model_type, layers)
    mla = _mla_shape(c) if model_type.startswith("deepseek") else None
    if mla is not None:
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    else:
        head_dim = c.positive("head_dim", hidden // heads)
    dense_layers = layers - (moe.num_layers if moe else 0)
    sliding_window, sliding_layers = _sliding_layers(c, model_type, layers)
    tie = config.get("tie_word_embeddings", False)
    weights, kv_cache_bytes = _weight_format(c, moe, layers, quant_config)
    return ModelArch(
        hf_id=name,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=c.positive("intermediate_size") if dense_layers else 0,
        num_attention_heads=heads,
        num_kv_heads=c.positive("num_key_value_heads", heads),
        head_dim=head_dim,
        vocab_size=c.positive("vocab_size"),
        tie_word_embeddings=bool(tie),
        max_position_embeddings=c.positive("max_position_embeddings"),
        moe=moe,
        mla=mla,
        sliding_window=sliding_window,
        num_sliding_layers=sliding_layers,
        weights=weights,
        kv_cache_bytes=kv_cache_bytes,
    )


def _moe_shape(c: _Config, model_type: str, layers: int) -> MoeShape | None:
    """Which layers are MoE, as each family's modelling code decides."""
    shared = 0
    if model_type in ("mixtral", "gpt_oss"):
        experts = c.positive("num_local_experts")
        per_token = c.positive("num_experts_per_tok", c.raw.get("experts_per_token"))
        size = c.positive("intermediate_size")  # per expert
        moe_layers = layers
    elif model_type in ("qwen2_moe", "qwen3_moe"):
        # transformers Qwen{2,3}MoeDecoderLayer: MoE unless in mlp_only_layers, every
        # decoder_sparse_step-th layer.
        experts = c.positive("num_experts")
        per_token = c.positive("num_experts_per_tok")
        size = c.positive("moe_intermediate_size")
        shared = c.count("shared_expert_intermediate_size", 0)
        step = c.positive("decoder_sparse_step", 1)
        dense = set(c.ints("mlp_only_layers"))
        moe_layers = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    elif model_type in ("deepseek_v2", "deepseek_v3"):
        # DeepseekV2DecoderLayer: MoE from layer first_k_dense_replace on, every moe_layer_freq.
        if not c.raw.get("n_routed_experts"):
            return None
        experts = c.positive("n_routed_experts")
        per_token = c.positive("num_experts_per_tok")
        size = c.positive("moe_intermediate_size")
        shared = c.count("n_shared_experts", 0) * size
        first = c.count("first_k_dense_replace", 0)
        freq = c.positive("moe_layer_freq", 1)
        moe_layers = sum(1 for i in range(layers) if i >= first and i % freq == 0)
    else:
        return None
    if per_token > experts:
        raise c.error(f"num_experts_per_tok {per_token} exceeds the {experts} experts")
    if moe_layers == 0:
        return None
    return MoeShape(
        num_experts=experts,
        experts_per_token=per_token,
        expert_intermediate_size=size,
        num_layers=moe_layers,
        shared_intermediate_size=shared,
        shared_expert_gate=model_type == "qwen2_moe" and shared > 0,
    )


def _mla_shape(c: _Config) -> MlaShape:
    q_lora = c.raw.get("q_lora_rank")
    return MlaShape(
        kv_lora_rank=c.positive("kv_lora_rank"),
        q_lora_rank=None if q_lora is None else c.positive("q_lora_rank"),
        qk_nope_head_dim=c.positive("qk_nope_head_dim"),
        qk_rope_head_dim=c.positive("qk_rope_head_dim"),
        v_head_dim=c.positive("v_head_dim"),
    )


def _sliding_layers(c: _Config, model_type: str, layers: int) -> tuple[int | None, int]:
    """(window, layers that use it); (None, 0) when every layer attends to the full context."""
    window = c.raw.get("sliding_window")
    layer_types = c.raw.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != layers:
            raise c.error(f"config.json's 'layer_types' does not list {layers} layers")
        for kind in layer_types:
            if kind not in _LAYER_TYPES:
                raise c.error(
                    f"layer type {kind!r} is not modelled (hybrid and linear-attention models "
                    f"are not; the simulator reads {', '.join(_LAYER_TYPES)})"
                )
        sliding = layer_types.count("sliding_attention")
    elif model_type in ("mistral", "mixtral"):
        sliding = layers if window is not None else 0
    elif model_type.startswith("qwen") and c.raw.get("use_sliding_window"):
        # transformers Qwen2Config: layers from max_window_layers on use the window.
        sliding = layers - min(c.count("max_window_layers", layers), layers)
    else:
        sliding = 0
    if sliding == 0:
        return None, 0
    window = c.positive("sliding_window")
    if window >= c.positive("max_position_embeddings"):
        return None, 0  # never shorter than the context: full attention
    return window, sliding


# --- weight formats -------------------------------------------------------------------------

_ATTENTION_MODULES = re.compile(
    r"(self_attn|(^|\.)(q|k|v|o|qkv|q_a|q_b|kv_a|kv_b)_proj|kv_a_proj_with_mqa)(\.|$)"
)
_MLP_MODULES = re.compile(r"(^|\.)(gate_proj|up_proj|down_proj|gate_up_proj)(\.|$)")
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def _dtype_name(c: _Config) -> str:
    raw = c.raw.get("torch_dtype", c.raw.get("dtype"))
    if raw is None:
        return "bf16"  # gpt-oss's config has none; vLLM serves it in bf16
    if raw not in _DTYPES:
        raise c.error(f"torch_dtype {raw!r} is not modelled ({', '.join(_DTYPES)} are)")
    return _DTYPES[raw]


def _weight_format(
    c: _Config, moe: MoeShape | None, layers: int, quant_config: Mapping[str, Any] | None
) -> tuple[WeightFormat, int]:
    """The weight format and the KV-cache element size, as vLLM 0.24 would serve them."""
    dtype = _dtype_name(c)
    q = c.raw.get("quantization_config") or c.raw.get("compression_config") or quant_config
    if not q:
        return WeightFormat(name=dtype), 2
    if not isinstance(q, Mapping):
        raise c.error("quantization_config is not an object")
    method = str(q.get("quant_method", "")).lower().replace("_", "-")
    if not method and isinstance(q.get("producer"), Mapping):
        method = str(q["producer"].get("name", "")).lower()  # ModelOpt's hf_quant_config.json
    kv_cache_bytes = 2
    if method == "fp8":
        quant_bytes, fp8_compute, experts_only = 1.0, True, False
        ignored = [*(q.get("modules_to_not_convert") or []), *(q.get("ignored_layers") or [])]
        name = "fp8"
    elif method == "compressed-tensors":
        fp8_compute = _compressed_tensors_fp8(c, q)
        quant_bytes, experts_only = 1.0, False
        ignored = list(q.get("ignore") or [])
        name = "fp8" if fp8_compute else "fp8 weight-only"
    elif method == "modelopt":
        inner = q.get("quantization", q)
        algo = str(inner.get("quant_algo", "")).upper()
        if algo not in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO"):
            raise c.error(f"ModelOpt quant_algo {algo!r} is not modelled (FP8 is)")
        quant_bytes, experts_only = 1.0, False
        fp8_compute = algo != "FP8_PB_WO"  # per-block weight-only
        ignored = list(inner.get("exclude_modules") or [])
        # vLLM resolves --kv-cache-dtype auto to ModelOpt's kv_cache_quant_algo
        # (utils/torch_utils.py get_kv_cache_quant_algo_string).
        if str(inner.get("kv_cache_quant_algo", "")).upper() == "FP8":
            kv_cache_bytes = 1
        name = "fp8" if fp8_compute else "fp8 weight-only"
    elif method == "mxfp4":
        # vLLM's Mxfp4Config quantizes the routed experts only; on Hopper and older its MoE
        # kernels take bf16 activations.
        quant_bytes, fp8_compute, experts_only = _MXFP4_BYTES, False, True
        ignored = []
        name = "mxfp4 experts"
    else:
        raise c.error(
            f"quantization {method or q.get('quant_method')!r} is not modelled (fp8, "
            "compressed-tensors FP8, ModelOpt FP8 and mxfp4 are)"
        )
    skipped = _unquantized_fractions(ignored, layers, moe)
    return (
        WeightFormat(
            name=name,
            quant_bytes=quant_bytes,
            attention_quantized=0.0 if experts_only else 1.0 - skipped[0],
            mlp_quantized=0.0 if experts_only else 1.0 - skipped[1],
            expert_quantized=1.0 - skipped[2],
            fp8_compute=fp8_compute,
        ),
        kv_cache_bytes,
    )


def _compressed_tensors_fp8(c: _Config, q: Mapping[str, Any]) -> bool:
    """True for W8A8 FP8, False for FP8 weight-only; anything else is not modelled."""
    groups = q.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise c.error("compressed-tensors quantization_config has no config_groups")
    activations_fp8 = []
    for group in groups.values():
        weights = group.get("weights") or {}
        bits, kind = weights.get("num_bits"), weights.get("type")
        if (bits, kind) != (8, "float"):
            raise c.error(
                f"compressed-tensors with {bits}-bit {kind} weights is not modelled "
                "(8-bit float weights are)"
            )
        acts = group.get("input_activations") or {}
        activations_fp8.append((acts.get("num_bits"), acts.get("type")) == (8, "float"))
    return all(activations_fp8)


def _unquantized_fractions(
    ignored: Sequence[object], layers: int, moe: MoeShape | None
) -> tuple[float, float, float]:
    """Fractions of (attention, dense MLP + shared experts, routed experts) left unquantized
    by `modules_to_not_convert`/`ignore` entries. An entry with no layer index (`lm_head`,
    `model.layers.*.self_attn`, `re:.*self_attn.*`) covers every layer; one with an index its
    layer. Norms, routers, embeddings and the LM head are unquantized anyway."""
    everywhere = -1
    hit: dict[str, set[int]] = {"attention": set(), "mlp": set(), "experts": set()}
    for entry in ignored:
        text = re.sub(r"(\.?\*|\$)+$", "", str(entry).removeprefix("re:"))  # "…mlp.*$"
        index = _LAYER_INDEX.search(text)
        layer = int(index.group(1)) if index else everywhere
        kinds = []
        if _ATTENTION_MODULES.search(text):
            kinds.append("attention")
        if "shared_expert" in text:
            kinds.append("mlp")
        elif "experts" in text:
            kinds.append("experts")
        elif _MLP_MODULES.search(text):
            kinds.append("mlp")
        elif re.search(r"(^|[.*])mlp$", text):  # a whole MLP block
            kinds += ["mlp", "experts"]
        for kind in kinds:
            hit[kind].add(layer)

    def fraction(kind: str, count: int) -> float:
        if everywhere in hit[kind]:
            return 1.0
        return min(len(hit[kind]) / count, 1.0) if count else 0.0

    moe_layers = moe.num_layers if moe else 0
    return (
        fraction("attention", layers),
        fraction("mlp", layers),
        fraction("experts", moe_layers),
    )
