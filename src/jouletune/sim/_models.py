"""Model shapes: transformers read from a Hugging Face `config.json`, and the catalog.

`ModelArch` is what the step-time model (`_perf.py`) needs of a model: the shapes of its
layers (attention, dense MLP, routed and shared experts), how its weights are stored (bf16,
FP8, MXFP4 experts) and its KV-cache layout. `ModelArch.from_config` reads it from a
`config.json` dict: dense llama/mistral/qwen2/qwen3, MoE mixtral/qwen2_moe/qwen3_moe/gpt_oss,
and deepseek_v2/v3 (MoE with MLA attention); anything else is refused with a one-line
ValueError naming what is not modelled. `model_arch(name)` takes a catalog name, a local
directory holding config.json, or a Hugging Face id (config.json fetched by `_hf_config`).

The catalog's entries are config.json fields copied from the Hub and parsed the same way, so
they need no network (the Llama repositories are gated).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

__all__ = ["MODEL_CATALOG", "MlaShape", "ModelArch", "MoeShape", "WeightFormat", "model_arch"]

# bf16 and fp16 both take 2 bytes; vLLM serves float32 checkpoints in bf16 on CUDA
# (config/model.py _resolve_auto_dtype: "Downcast for float32 models").
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16"}
# MXFP4 (OCP microscaling): 4-bit values plus one 8-bit E8M0 scale per block of 32.
_MXFP4_BYTES = (4 * 32 + 8) / 32 / 8


@dataclass(frozen=True, kw_only=True)
class WeightFormat:
    """How the weights are stored: bytes per parameter by kind of layer.

    vLLM quantizes linear layers and routed experts only: embeddings, the LM head, norms and
    MoE routers stay at `base_bytes`. Each `*_quantized` is the fraction of that kind's weights
    stored at `quant_bytes` (0 or 1, or between where `modules_to_not_convert` names single
    layers).

    Attributes:
        name: what the error messages call it (`bf16`, `fp16`, `fp8`, `fp8 weight-only`,
            `mxfp4 experts`).
        base_bytes: bytes per unquantized parameter (2: bf16 or fp16).
        quant_bytes: bytes per quantized parameter (1 for FP8, 0.53125 for MXFP4).
        attention_quantized: fraction of the attention projections quantized.
        mlp_quantized: fraction of the dense MLPs and shared experts quantized.
        expert_quantized: fraction of the routed experts quantized.
        fp8_compute: the quantized GEMMs take FP8 activations (W8A8) and so run on FP8 tensor
            cores where the GPU has them; otherwise they run at the bf16 rate.
    """

    name: str = "bf16"
    base_bytes: float = 2.0
    quant_bytes: float = 2.0
    attention_quantized: float = 0.0
    mlp_quantized: float = 0.0
    expert_quantized: float = 0.0
    fp8_compute: bool = False

    def bytes_per_param(self, quantized: float) -> float:
        """Average bytes per parameter of a kind with `quantized` fraction quantized."""
        return self.base_bytes * (1.0 - quantized) + self.quant_bytes * quantized


@dataclass(frozen=True, kw_only=True)
class MoeShape:
    """The mixture-of-experts layers.

    Attributes:
        num_experts: routed experts per MoE layer (E).
        experts_per_token: experts each token is routed to (k).
        expert_intermediate_size: intermediate size of one routed expert (gated MLP).
        num_layers: decoder layers whose MLP is MoE; the others have a dense MLP.
        shared_intermediate_size: all shared experts of one layer together (0: none); every
            token runs them.
        shared_expert_gate: Qwen2-MoE's sigmoid gate on the shared expert (`hidden` weights).
    """

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_layers: int
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False


@dataclass(frozen=True, kw_only=True)
class MlaShape:
    """DeepSeek's multi-head latent attention: the KV cache holds one latent per token.

    Attributes mirror config.json: `kv_lora_rank`, `q_lora_rank` (None: a plain q_proj),
    `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`.
    """

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True, kw_only=True)
class ModelArch:
    """A decoder-only transformer's shape: GQA or MLA attention, gated MLPs, optional experts.

    Attributes mirror `config.json`: `num_hidden_layers`, `hidden_size`, `intermediate_size`
    (the dense MLP's), `num_attention_heads`, `num_key_value_heads`, `head_dim`,
    `vocab_size`, `tie_word_embeddings`, `max_position_embeddings`; `moe` and `mla` as above;
    `sliding_window` and `num_sliding_layers` for layers that attend to the last
    `sliding_window` tokens only; `weights` the weight format; `kv_cache_bytes` bytes per
    KV-cache element (2 for bf16, 1 for an FP8 KV cache the checkpoint asks for).
    """

    hf_id: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    moe: MoeShape | None = None
    mla: MlaShape | None = None
    sliding_window: int | None = None
    num_sliding_layers: int = 0
    weights: WeightFormat = WeightFormat()
    kv_cache_bytes: int = 2

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], name: str, *, quant_config: Mapping[str, Any] | None = None
    ) -> ModelArch:
        """Read a Hugging Face `config.json` dict; `quant_config` is a ModelOpt
        `hf_quant_config.json`, used when config.json has no `quantization_config` (as vLLM
        does). Raises ValueError (one line, naming `name`) for what is not modelled."""
        return _parse_config(config, name, quant_config)

    # --- parameters -----------------------------------------------------------------------

    @cached_property
    def attention_params_per_layer(self) -> int:
        """Attention projections of one layer."""
        h, heads = self.hidden_size, self.num_attention_heads
        if self.mla is None:
            return h * heads * self.head_dim * 2 + h * self.num_kv_heads * self.head_dim * 2
        m = self.mla
        qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank is None:
            q = h * heads * qk_dim
        else:
            q = h * m.q_lora_rank + m.q_lora_rank * heads * qk_dim
        kv_a = h * (m.kv_lora_rank + m.qk_rope_head_dim)
        kv_b = m.kv_lora_rank * heads * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv_a + kv_b + heads * m.v_head_dim * h

    @cached_property
    def norm_params_per_layer(self) -> int:
        """RMSNorm weights of one layer (MLA adds norms on its latents)."""
        extra = 0
        if self.mla is not None:
            extra = self.mla.kv_lora_rank + (self.mla.q_lora_rank or 0)
        return 2 * self.hidden_size + extra

    @cached_property
    def dense_mlp_params(self) -> int:
        """One dense gated MLP (gate, up and down projections)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def num_moe_layers(self) -> int:
        """Decoder layers whose MLP is a mixture of experts."""
        return 0 if self.moe is None else self.moe.num_layers

    @property
    def num_experts(self) -> int:
        """Routed experts per MoE layer (0 for a dense model)."""
        return 0 if self.moe is None else self.moe.num_experts

    @property
    def experts_per_token(self) -> int:
        """Routed experts each token uses per MoE layer (0 for a dense model)."""
        return 0 if self.moe is None else self.moe.experts_per_token

    @cached_property
    def expert_params(self) -> int:
        """One routed expert of one layer."""
        return 0 if self.moe is None else 3 * self.hidden_size * self.moe.expert_intermediate_size

    @cached_property
    def shared_expert_params(self) -> int:
        """The shared experts of one MoE layer."""
        return 0 if self.moe is None else 3 * self.hidden_size * self.moe.shared_intermediate_size

    @cached_property
    def router_params(self) -> int:
        """The router of one MoE layer (and Qwen2-MoE's shared-expert gate)."""
        if self.moe is None:
            return 0
        return self.hidden_size * (self.moe.num_experts + int(self.moe.shared_expert_gate))

    def _layer_params(self, experts: int) -> int:
        moe_layer = self.shared_expert_params + self.router_params + experts * self.expert_params
        return (
            self.num_layers * (self.attention_params_per_layer + self.norm_params_per_layer)
            + (self.num_layers - self.num_moe_layers) * self.dense_mlp_params
            + self.num_moe_layers * moe_layer
        )

    @cached_property
    def layer_params(self) -> int:
        """Weights of all decoder layers (attention, MLPs, every expert, routers, norms)."""
        return self._layer_params(self.num_experts)

    @cached_property
    def active_layer_params(self) -> int:
        """Decoder weights one token runs through: `experts_per_token` routed experts a layer."""
        return self._layer_params(self.experts_per_token)

    @cached_property
    def embedding_params(self) -> int:
        """Input embedding table."""
        return self.vocab_size * self.hidden_size

    @cached_property
    def lm_head_params(self) -> int:
        """Output projection (shared with the embedding when tied)."""
        return self.vocab_size * self.hidden_size

    @cached_property
    def num_params(self) -> int:
        """All parameters, as the model card counts them."""
        untied_head = 0 if self.tie_word_embeddings else self.lm_head_params
        return self.layer_params + self.embedding_params + untied_head + self.hidden_size

    @cached_property
    def active_params(self) -> int:
        """Parameters one token's forward pass multiplies by: the active decoder weights, the
        final norm and the LM head; not the input embedding (a table lookup)."""
        return self.active_layer_params + self.lm_head_params + self.hidden_size

    # --- bytes ----------------------------------------------------------------------------

    @cached_property
    def _kind_params(self) -> tuple[int, int, int]:
        """(attention, dense MLPs + shared experts, routed experts) parameters, all layers."""
        attention = self.num_layers * self.attention_params_per_layer
        mlp = (self.num_layers - self.num_moe_layers) * self.dense_mlp_params
        mlp += self.num_moe_layers * self.shared_expert_params
        return attention, mlp, self.num_moe_layers * self.num_experts * self.expert_params

    @cached_property
    def weight_bytes(self) -> int:
        """All weights in bytes, as stored in GPU memory."""
        attention, mlp, experts = self._kind_params
        rest = self.num_params - attention - mlp - experts
        stored = self._kinds_bytes(attention, mlp, experts) + rest * self.weights.base_bytes
        return math.ceil(stored)

    @cached_property
    def step_weight_bytes(self) -> float:
        """Weights every step reads whatever its batch: all but the routed experts and the
        input embedding (only the rows of the step's tokens are gathered)."""
        attention, mlp, _ = self._kind_params
        rest = self.layer_params - attention - mlp - self.num_experts * self._experts_all_layers
        return self._kinds_bytes(attention, mlp, 0) + (rest + self.lm_head_params) * (
            self.weights.base_bytes
        )

    @cached_property
    def _experts_all_layers(self) -> int:
        """One routed expert in every MoE layer."""
        return self.num_moe_layers * self.expert_params

    @cached_property
    def expert_bytes_all_layers(self) -> float:
        """Bytes of one routed expert in every MoE layer (what a step reads per expert
        touched)."""
        return self._experts_all_layers * self.weights.bytes_per_param(
            self.weights.expert_quantized
        )

    @cached_property
    def fp8_active_layer_params(self) -> float:
        """Of `active_layer_params`, those in W8A8 FP8 GEMMs (0 unless `fp8_compute`)."""
        w = self.weights
        if not w.fp8_compute:
            return 0.0
        attention, mlp, _ = self._kind_params
        experts = self.experts_per_token * self._experts_all_layers
        return (
            attention * w.attention_quantized + mlp * w.mlp_quantized + experts * w.expert_quantized
        )

    def _kinds_bytes(self, attention: int, mlp: int, experts: int) -> float:
        w = self.weights
        return (
            attention * w.bytes_per_param(w.attention_quantized)
            + mlp * w.bytes_per_param(w.mlp_quantized)
            + experts * w.bytes_per_param(w.expert_quantized)
        )

    # --- KV cache and attention -----------------------------------------------------------

    @cached_property
    def kv_bytes_per_token_per_layer(self) -> int:
        """KV-cache bytes of one token in one layer: K and V of every KV head, or MLA's latent
        (`kv_lora_rank + qk_rope_head_dim`, shared by all heads)."""
        if self.mla is not None:
            return (self.mla.kv_lora_rank + self.mla.qk_rope_head_dim) * self.kv_cache_bytes
        return 2 * self.num_kv_heads * self.head_dim * self.kv_cache_bytes

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    @cached_property
    def kv_pool_layers(self) -> int:
        """Layers one block of vLLM's KV pool spans. With full and sliding-window layers
        mixed, vLLM groups layers by attention type and every group shares one pool of blocks
        the size of `group_size` layers (v1/core/kv_cache_utils.py,
        `_get_kv_cache_groups_uniform_page_size`): the smaller type's layer count, or the
        larger's when it is under 1.5 times the smaller."""
        sliding = self.num_sliding_layers
        if sliding in (0, self.num_layers):
            return self.num_layers
        fewer, more = sorted((sliding, self.num_layers - sliding))
        return more if more < 1.5 * fewer else fewer

    @cached_property
    def kv_pool_bytes_per_token(self) -> int:
        """Bytes of one token of vLLM's KV pool (what `num_gpu_blocks` is counted in)."""
        return self.kv_pool_layers * self.kv_bytes_per_token_per_layer

    @cached_property
    def attention_flops_per_token_pair(self) -> int:
        """Flops of one query token attending to one key token, all layers (QK^T and PV)."""
        if self.mla is not None:
            m = self.mla
            qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
            return 2 * self.num_layers * self.num_attention_heads * (qk_dim + m.v_head_dim)
        return 4 * self.num_layers * self.num_attention_heads * self.head_dim


# --- reading config.json --------------------------------------------------------------------

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


def _parse_config(
    config: Mapping[str, Any], name: str, quant_config: Mapping[str, Any] | None
) -> ModelArch:
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


# --- the catalog ----------------------------------------------------------------------------


def _dense(
    model_type: str, layers: int, hidden: int, mlp: int, heads: int, vocab: int, positions: int
) -> dict[str, Any]:
    """The config.json fields of a catalog model (8 KV heads, head_dim 128, untied, bf16)."""
    return {
        "model_type": model_type,
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


# config.json on the Hub (docs/simulator.md, "Model catalog"). The Llama-8B row is exactly the
# shape ../shared/vllm-h100/mk_model.py served in the calibration.
_CATALOG_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B-Instruct": _dense("llama", 32, 4096, 14336, 32, 128256, 131072),
    "meta-llama/Llama-3.1-70B-Instruct": _dense("llama", 80, 8192, 28672, 64, 128256, 131072),
    "Qwen/Qwen3-8B": _dense("qwen3", 36, 4096, 12288, 32, 151936, 40960),
    "Qwen/Qwen3-14B": _dense("qwen3", 40, 5120, 17408, 40, 151936, 40960),
    "Qwen/Qwen3-32B": _dense("qwen3", 64, 5120, 25600, 64, 151936, 40960),
}

MODEL_CATALOG: dict[str, ModelArch] = {
    name: ModelArch.from_config(config, name) for name, config in _CATALOG_CONFIGS.items()
}

# Aliases a user may type: the base (non-Instruct) Llama ids share the shapes.
_ALIASES = {
    "meta-llama/Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B": "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B-Instruct",
}


def catalog_entry(name: str) -> ModelArch | None:
    """The catalog's entry for `name` (an alias, any case), or None."""
    key = _ALIASES.get(name, name)
    if key in MODEL_CATALOG:
        return MODEL_CATALOG[key]
    lowered = {k.lower(): k for k in MODEL_CATALOG}
    return MODEL_CATALOG[lowered[key.lower()]] if key.lower() in lowered else None


def model_arch(name: str) -> ModelArch:
    """The model `name` names: a catalog entry, a local directory holding `config.json`, or a
    Hugging Face id whose config.json is fetched (no weights). Raises ValueError with a
    one-line message naming `name` when it cannot be read or is not modelled."""
    entry = catalog_entry(name)
    if entry is not None:
        return entry
    from jouletune.sim._hf_config import load_config

    config, quant_config = load_config(name, catalog=sorted(MODEL_CATALOG))
    return ModelArch.from_config(config, name, quant_config=quant_config)
