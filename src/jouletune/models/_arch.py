"""`ModelArch`: what jouletune knows of a decoder-only transformer's shape.

The shapes of its layers (attention, dense MLP, routed and shared experts), how its weights
are stored (bf16, FP8, MXFP4 experts) and its KV-cache layout: enough for the simulator's
step-time model and for the tuner's diagnosis (FLOPs and bytes per step). `parse_config`
(`_parse.py`) reads one from a Hugging Face `config.json`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

__all__ = ["MlaShape", "ModelArch", "MoeShape", "WeightFormat", "experts_touched"]


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

    def decode_step(self, batch: int, context: float) -> tuple[float, float]:
        """(flops, bytes read) of one decode step of `batch` sequences, each attending to
        `context` tokens: the weights every step reads, the experts the batch touches, the KV
        cache; two flops per active parameter per token, plus attention."""
        experts = (
            experts_touched(self.num_experts, self.experts_per_token, batch) if self.moe else 0.0
        )
        weights = self.step_weight_bytes + experts * self.expert_bytes_all_layers
        flops = batch * (2 * self.active_params + context * self.attention_flops_per_token_pair)
        return flops, weights + batch * context * self.kv_bytes_per_token

    @cached_property
    def attention_flops_per_token_pair(self) -> int:
        """Flops of one query token attending to one key token, all layers (QK^T and PV)."""
        if self.mla is not None:
            m = self.mla
            qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
            return 2 * self.num_layers * self.num_attention_heads * (qk_dim + m.v_head_dim)
        return 4 * self.num_layers * self.num_attention_heads * self.head_dim


def experts_touched(num_experts: int, experts_per_token: int, num_tokens: int) -> float:
    """Expected distinct experts of one MoE layer that `num_tokens` tokens are routed to, each
    picking `experts_per_token` of `num_experts` uniformly: E·(1 − (1 − k/E)^n). One token
    touches k; a large batch touches all E. Real routers are not uniform (popular experts
    are shared more), so this is the most a batch can touch on average."""
    if num_tokens <= 0:
        return 0.0
    miss = 1.0 - experts_per_token / num_experts
    return num_experts * (1.0 - miss**num_tokens)
