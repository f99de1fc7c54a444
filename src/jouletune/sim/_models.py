"""The model catalog: transformer shapes by Hugging Face id, no weights needed.

Each entry copies the fields of the model's `config.json` on the Hugging Face Hub that the
step-time model needs; parameter count, weight bytes and KV bytes per token follow from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

__all__ = ["MODEL_CATALOG", "ModelArch", "model_arch"]

_BF16_BYTES = 2


@dataclass(frozen=True, kw_only=True)
class ModelArch:
    """A decoder-only transformer's shape (Llama/Qwen family: GQA attention, gated MLP).

    Attributes mirror `config.json`: `num_hidden_layers`, `hidden_size`, `intermediate_size`,
    `num_attention_heads`, `num_key_value_heads`, `head_dim`, `vocab_size`,
    `tie_word_embeddings`, `max_position_embeddings`.
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

    @cached_property
    def layer_params(self) -> int:
        """Weights of all decoder layers (attention, MLP, norms)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_attention_heads * d * 2 + h * self.num_kv_heads * d * 2
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp + 2 * h)

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
    def weight_bytes(self) -> int:
        """bf16 weights in bytes."""
        return self.num_params * _BF16_BYTES

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies across all layers (K and V, bf16)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _BF16_BYTES

    @cached_property
    def attention_flops_per_token_pair(self) -> int:
        """Flops of one query token attending to one key token, all layers (QK^T and PV)."""
        return 4 * self.num_layers * self.num_attention_heads * self.head_dim


MODEL_CATALOG: dict[str, ModelArch] = {
    m.hf_id: m
    for m in (
        ModelArch(
            hf_id="meta-llama/Llama-3.1-8B-Instruct",
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_attention_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
        ),
        ModelArch(
            hf_id="meta-llama/Llama-3.1-70B-Instruct",
            num_layers=80,
            hidden_size=8192,
            intermediate_size=28672,
            num_attention_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
        ),
        ModelArch(
            hf_id="Qwen/Qwen3-8B",
            num_layers=36,
            hidden_size=4096,
            intermediate_size=12288,
            num_attention_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=False,
            max_position_embeddings=40960,
        ),
        ModelArch(
            hf_id="Qwen/Qwen3-14B",
            num_layers=40,
            hidden_size=5120,
            intermediate_size=17408,
            num_attention_heads=40,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=False,
            max_position_embeddings=40960,
        ),
        ModelArch(
            hf_id="Qwen/Qwen3-32B",
            num_layers=64,
            hidden_size=5120,
            intermediate_size=25600,
            num_attention_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=False,
            max_position_embeddings=40960,
        ),
    )
}

# Aliases a user may type: the base (non-Instruct) Llama ids share the shapes.
_ALIASES = {
    "meta-llama/Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B": "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B-Instruct",
}


def model_arch(hf_id: str) -> ModelArch:
    """The catalog entry for `hf_id`; raises ValueError listing the catalog when unknown."""
    key = _ALIASES.get(hf_id, hf_id)
    if key in MODEL_CATALOG:
        return MODEL_CATALOG[key]
    lowered = {k.lower(): k for k in MODEL_CATALOG}
    if key.lower() in lowered:
        return MODEL_CATALOG[lowered[key.lower()]]
    raise ValueError(
        f"unknown model {hf_id!r}; the simulator's catalog has: {', '.join(sorted(MODEL_CATALOG))}"
    )
