"""jouletune.models: what jouletune knows of model architectures.

    arch = model_arch("Qwen/Qwen3-30B-A3B")   # catalog name, local directory or HF id
    arch.active_params, arch.step_weight_bytes(...), arch.kv_bytes_per_token

A `ModelArch` is read from a Hugging Face `config.json` (dense, MoE, MLA; bf16, FP8, MXFP4):
the simulator's step-time model and the tuner's diagnosis (FLOPs and bytes per step against
the GPU's roofline) both start from it. Imports nothing of jouletune's.
"""

from jouletune.models._arch import MlaShape, ModelArch, MoeShape, WeightFormat, experts_touched
from jouletune.models._catalog import MODEL_CATALOG, catalog_entry, model_arch
from jouletune.models._parse import SUPPORTED_MODEL_TYPES, parse_config

__all__ = [
    "MODEL_CATALOG",
    "SUPPORTED_MODEL_TYPES",
    "MlaShape",
    "ModelArch",
    "MoeShape",
    "WeightFormat",
    "catalog_entry",
    "experts_touched",
    "model_arch",
    "parse_config",
]
