"""Tokenizers: a model's own (HF `tokenizers`), or the simulator's word vocabulary.

The load generator needs the model's tokenizer to build prompts of an exact token length and
to count the tokens of dataset prompts; the sim-server needs the same tokenizer to count what
it is sent, as `vllm serve` does. Both load it here:

    tokenizer = load_tokenizer("deepseek-ai/DeepSeek-V3")   # a HF id, a directory, or a file
    tokenizer.count("hello world")                          # tokens the server will count

A HF id is fetched through `huggingface_hub` (its cache; `HF_TOKEN` for gated models,
`HF_HUB_OFFLINE=1` to stay offline). `WORDS` names the simulator's own vocabulary
(`t0`..`t128255`, ../shared/vllm-h100/mk_model.py's), where every word is one token.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "WORDS",
    "HfTokenizer",
    "PromptTokenizer",
    "TokenizerError",
    "WordTokenizer",
    "load_tokenizer",
]

WORDS = "words"
# mk_model.py's vocabulary: <s>, </s>, <unk>, then t3..t128255.
_WORD_VOCAB = 128_256
_WORD_SPECIAL = frozenset({0, 1, 2})


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message is one line naming it."""


class PromptTokenizer(Protocol):
    """What building and counting prompts needs of a tokenizer.

    Attributes:
        name: what was loaded (a HF id, a path, or `words`).
        vocab_size: the base vocabulary (added tokens above it are never sampled, as in vLLM).
        special_ids: ids never sampled into a prompt.
        num_special_tokens: tokens the server adds to every prompt (a BOS, usually).
    """

    @property
    def name(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def special_ids(self) -> frozenset[int]: ...
    @property
    def num_special_tokens(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the special tokens the server adds."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`."""
        ...

    def count(self, text: str) -> int:
        """Tokens the server counts for prompt `text` (special tokens included)."""
        ...


@dataclass(frozen=True)
class WordTokenizer:
    """The simulator's vocabulary: each whitespace-separated word is one token; `t<N>` is id N."""

    name: str = WORDS
    vocab_size: int = _WORD_VOCAB
    special_ids: frozenset[int] = _WORD_SPECIAL
    num_special_tokens: int = 0

    def encode(self, text: str) -> list[int]:
        """Word `t<N>` is id N; any other word counts as one token (id 2, `<unk>`)."""
        return [_word_id(w) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        """`t<N>` words joined by spaces."""
        return " ".join(f"t{i}" for i in ids)

    def count(self, text: str) -> int:
        """One token per word."""
        return len(text.split())


class HfTokenizer:
    """A HF `tokenizers` tokenizer, with the special tokens its server adds to a prompt."""

    def __init__(self, *, name: str, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:  # tokenizers raises bare Exceptions for malformed files
            why = " ".join(str(err).split())[:200]
            raise TokenizerError(f"tokenizer {name}: {tokenizer_json} is not one: {why}") from None
        self.name = name
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=False)
        added = self._tok.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, token in added.items() if token.special)
        self.num_special_tokens = self._added_by_server(tokenizer_json.parent)

    # The batch calls release Python's GIL while the Rust tokenizer works; the single ones
    # hold it. The bench builds prompts in a worker thread during a run, and a held GIL
    # stalls the event loop that stamps every streamed chunk: ITL read high
    # (benchmarks/client_prompt_gil.py).
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ids: list[int] = self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` (special tokens skipped, as vLLM's benchmark decodes)."""
        text: str = self._tok.decode_batch([list(ids)], skip_special_tokens=True)[0]
        return text

    def count(self, text: str) -> int:
        """Tokens of `text` plus the special tokens the server adds."""
        return len(self.encode(text)) + self.num_special_tokens

    def _added_by_server(self, folder: Path) -> int:
        """Special tokens a server adds to each prompt: the post-processor's, plus a BOS that
        `tokenizer_config.json` asks for (`add_bos_token`) when its tokenizer class honours
        that flag (transformers' Llama and Gemma fast tokenizers rebuild their post-processor
        from it; the generic PreTrainedTokenizerFast does not: on the H100, vLLM counted 127
        tokens for a 127-token prompt of such a tokenizer that asked for a BOS)."""
        probe = "a"
        with_special = self._tok.encode(probe, add_special_tokens=True).ids
        added = len(with_special) - len(self._tok.encode(probe, add_special_tokens=False).ids)
        config = _read_json(folder / "tokenizer_config.json")
        bos = _token_text(config.get("bos_token"))
        honoured = config.get("tokenizer_class") in _HONOUR_ADD_BOS
        if config.get("add_bos_token") and honoured and bos is not None:
            bos_id = self._tok.token_to_id(bos)
            if bos_id is not None and (not with_special or with_special[0] != bos_id):
                added += 1
        return added


# Tokenizer classes whose fast implementation adds the BOS `add_bos_token` asks for.
_HONOUR_ADD_BOS = frozenset(
    f"{family}Tokenizer{fast}"
    for family in ("Llama", "CodeLlama", "Gemma")
    for fast in ("", "Fast")
)


def load_tokenizer(name: str) -> PromptTokenizer:
    """The tokenizer `name` names: `words`, a `tokenizer.json` file, a directory holding one,
    or a HF model id (its `tokenizer.json` and `tokenizer_config.json`, fetched once).

    Raises:
        TokenizerError: it cannot be loaded; the message is one line and names it.
    """
    if name == WORDS:
        return WordTokenizer()
    path = Path(name).expanduser()
    if path.is_file():
        return HfTokenizer(name=name, tokenizer_json=path)
    if path.is_dir():
        tokenizer_json = path / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise TokenizerError(f"tokenizer {name}: the directory has no tokenizer.json")
        return HfTokenizer(name=name, tokenizer_json=tokenizer_json)
    if name.startswith(("/", "./", "../", "~")):
        raise TokenizerError(f"tokenizer {name}: no such file or directory")
    return HfTokenizer(name=name, tokenizer_json=_from_hub(name))


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(repo_id, "tokenizer.json", token=os.environ.get("HF_TOKEN")))
    except LocalEntryNotFoundError:
        raise TokenizerError(
            f"tokenizer {repo_id}: not in the local cache and the hub cannot be reached "
            "(offline?); pass a local directory with --tokenizer"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        why = {401: "gated or private: set HF_TOKEN", 403: "gated: set HF_TOKEN"}.get(
            status if isinstance(status, int) else 0, f"HTTP {status}"
        )
        raise TokenizerError(f"tokenizer {repo_id}: the hub refused it ({why})") from None
    except (OSError, ValueError) as err:
        raise TokenizerError(f"tokenizer {repo_id}: {' '.join(str(err).split())}") from None
    # Optional (whether the server adds a BOS); without one the post-processor alone decides.
    with contextlib.suppress(Exception):
        hf_hub_download(repo_id, "tokenizer_config.json", token=os.environ.get("HF_TOKEN"))
    return path


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: object) -> str | None:
    """A token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _word_id(word: str) -> int:
    if word.startswith("t") and word[1:].isdigit():
        number = int(word[1:])
        if number < _WORD_VOCAB:
            return number
    return 2
