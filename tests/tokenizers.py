"""The real BPE tokenizer the tests build and count prompts with: DeepSeek-V3's 129,280-entry
vocabulary (MIT), which scripts/install-tools.sh takes from the litellm wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

from jouletune.tokenizer import PromptTokenizer, load_tokenizer

DEEPSEEK_DIR = Path(__file__).resolve().parents[1] / ".tools" / "tokenizers" / "deepseek-v3"


def deepseek() -> PromptTokenizer:
    """The tokenizer; fails the test (CI installs it) rather than skipping when it is missing."""
    if not (DEEPSEEK_DIR / "tokenizer.json").is_file():
        pytest.fail(f"{DEEPSEEK_DIR} is missing: run scripts/install-tools.sh")
    return load_tokenizer(str(DEEPSEEK_DIR))
