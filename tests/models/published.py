"""The architecture fields of published models' config.json (`configs/`), for the tests.

Copied from aiconfigurator-core 0.12.0's `model_configs/` (or the rows of its tables for
Qwen2.5-32B-Instruct and DeepSeek-V2-Lite), which hold each model's published config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jouletune.models import ModelArch, parse_config

CONFIGS = Path(__file__).resolve().parent / "configs"


def config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return data


def arch(name: str) -> ModelArch:
    return parse_config(config(name), name)
