"""The model catalog (config.json fields copied from the Hub, parsed like any other, so the gated
Llama repositories need no network) and `model_arch(name)`: a catalog entry, a local directory
holding config.json, or a Hugging Face id whose config.json is fetched (`_hub.py`)."""

from __future__ import annotations

from typing import Any

from jouletune.models._arch import ModelArch
from jouletune.models._parse import parse_config

__all__ = ["MODEL_CATALOG", "catalog_entry", "model_arch"]


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
    name: parse_config(config, name) for name, config in _CATALOG_CONFIGS.items()
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
    from jouletune.models._hub import load_config  # huggingface_hub loads only when needed

    config, quant_config = load_config(name, catalog=sorted(MODEL_CATALOG))
    return parse_config(config, name, quant_config=quant_config)
