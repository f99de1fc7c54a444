"""The dummy model's tokenizer, as `shared/vllm-h100/mk_model.py` writes it for the H100 runs.

A word-level vocabulary: `<s>`, `</s>`, `<unk>`, then `t3`..`t128255`, split on whitespace,
decoded by joining words with spaces. `jouletune bench` runs made since it loads the served
model's tokenizer (their result's `workload.tokenizer` names it) built their prompts through
it, as vLLM's random dataset does, so a replay rebuilds them exactly with this.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from jouletune.tokenizer import PromptTokenizer, load_tokenizer

VOCAB_SIZE = 128256


def word_level() -> Tokenizer:
    """The dummy model's tokenizer, built as mk_model.py builds it."""
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2} | {f"t{i}": i for i in range(3, VOCAB_SIZE)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


@functools.cache
def dummy_model_tokenizer() -> PromptTokenizer:
    """The tokenizer `jouletune bench` loaded from the dummy model's directory (written to a
    temporary one, which loading reads whole)."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 8192, "add_bos_token": False,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="jouletune-dummy-tokenizer-") as name:
        folder = Path(name)
        word_level().save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        return load_tokenizer(name)
