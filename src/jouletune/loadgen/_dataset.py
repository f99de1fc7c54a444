"""Workloads: the prompts a run sends and how many tokens each asks for.

- `random`: prompts of N words `t<id>`, ids uniform in [3, 128255]. Each word is one token for
  the sim-server and for real vLLM with ../shared/vllm-h100/mk_model.py's word-level tokenizer,
  so the prompt is exactly N tokens there (other tokenizers split words differently).
  N is uniform in [len * (1 - range_ratio), len * (1 + range_ratio)] as in vLLM.
- `sharegpt`: ShareGPT JSON (a list of `{"conversations": [{"from", "value"}, ...]}`); the
  first turn is the prompt, the second turn's length sets max_tokens. jouletune has no
  tokenizer for arbitrary models, so lengths are estimated at 4 bytes per token (OpenAI's rule
  of thumb) unless `sharegpt_output_len` fixes the output; the prompt tokens the server
  actually saw come back in `usage.prompt_tokens`. Conversations with fewer than two turns or
  an output under 4 tokens are skipped (vLLM's filter).
- `custom`: JSON Lines, one request per line: `{"prompt": "...", "output_len": 128}`
  (`output_len` a positive integer); blank lines are ignored.

Requests are shuffled with the seed; when a file has fewer usable entries than requested,
entries repeat in the same order.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["DatasetError", "SampleRequest", "load_requests"]

# Token ids 0-2 are <s>, </s> and <unk> in mk_model.py's vocabulary; 128255 is its last id.
_MIN_TOKEN_ID = 3
_MAX_TOKEN_ID = 128255
_BYTES_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
_MIN_SHAREGPT_OUTPUT_LEN = 4  # vLLM's `is_valid_sequence` minimum


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleRequest:
    """One request to send.

    Attributes:
        prompt: the prompt text.
        prompt_len: prompt tokens (exact for `random`, estimated for the file datasets).
        output_len: tokens to generate (`max_tokens`).
    """

    prompt: str
    prompt_len: int
    output_len: int


def load_requests(
    *,
    dataset: Literal["random", "sharegpt", "custom"],
    num_prompts: int,
    seed: int,
    dataset_path: Path | None = None,
    random_input_len: int = 1024,
    random_output_len: int = 128,
    random_range_ratio: float = 0.0,
    sharegpt_output_len: int | None = None,
) -> list[SampleRequest]:
    """Build the `num_prompts` requests of a workload.

    Raises:
        DatasetError: a missing, empty or malformed dataset file.
    """
    if dataset == "random":
        return _random_requests(
            num_prompts, seed, random_input_len, random_output_len, random_range_ratio
        )
    if dataset_path is None:
        raise DatasetError(f"dataset {dataset!r} needs --dataset-path")
    text = _read(dataset_path)
    if dataset == "sharegpt":
        entries = _sharegpt_entries(dataset_path, text, sharegpt_output_len)
    else:
        entries = _custom_entries(dataset_path, text)
    random.Random(seed).shuffle(entries)
    return list(itertools.islice(itertools.cycle(entries), num_prompts))


def _random_requests(
    n: int, seed: int, input_len: int, output_len: int, range_ratio: float
) -> list[SampleRequest]:
    rng = np.random.default_rng(seed)
    in_lo, in_hi = (
        math.floor(input_len * (1 - range_ratio)),
        math.ceil(input_len * (1 + range_ratio)),
    )
    out_lo = math.floor(output_len * (1 - range_ratio))
    out_hi = math.ceil(output_len * (1 + range_ratio))
    in_lens = rng.integers(max(1, in_lo), in_hi + 1, size=n)
    out_lens = rng.integers(max(1, out_lo), out_hi + 1, size=n)
    requests = []
    for in_len, out_len in zip(in_lens, out_lens, strict=True):
        ids = rng.integers(_MIN_TOKEN_ID, _MAX_TOKEN_ID + 1, size=int(in_len))
        prompt = "t" + " t".join(map(str, ids.tolist()))
        requests.append(
            SampleRequest(prompt=prompt, prompt_len=int(in_len), output_len=int(out_len))
        )
    return requests


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise DatasetError(f"{path}: empty dataset file")
    return text


def _estimate_tokens(text: str) -> int:
    return max(1, round(len(text.encode("utf-8")) / _BYTES_PER_TOKEN))


def _sharegpt_entries(path: Path, text: str, output_len: int | None) -> list[SampleRequest]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: ShareGPT data must be a JSON list of conversations")
    entries = []
    for conv in _conversations(data):
        prompt, completion = conv[0], conv[1]
        out = output_len if output_len is not None else _estimate_tokens(completion)
        if out < _MIN_SHAREGPT_OUTPUT_LEN:
            continue
        entries.append(
            SampleRequest(prompt=prompt, prompt_len=_estimate_tokens(prompt), output_len=out)
        )
    if not entries:
        raise DatasetError(
            f"{path}: no usable ShareGPT conversation (need 'conversations' with two turns "
            f"whose 'value' is text and an output of at least {_MIN_SHAREGPT_OUTPUT_LEN} tokens)"
        )
    return entries


def _conversations(data: Iterable[Any]) -> Iterable[Sequence[str]]:
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        values = [t.get("value") if isinstance(t, dict) else None for t in turns[:2]]
        if all(isinstance(v, str) and v for v in values):
            yield values  # type: ignore[misc]  # checked to be str just above


def _custom_entries(path: Path, text: str) -> list[SampleRequest]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entries.append(_custom_entry(path, lineno, line))
    return entries


def _custom_entry(path: Path, lineno: int, line: str) -> SampleRequest:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{where}: not valid JSON: {err.msg}") from None
    if not isinstance(obj, dict):
        raise DatasetError(
            f'{where}: expected an object like {{"prompt": "...", "output_len": 128}}'
        )
    prompt, output_len = obj.get("prompt"), obj.get("output_len")
    if not isinstance(prompt, str) or not prompt:
        raise DatasetError(f"{where}: 'prompt' must be a non-empty string")
    if isinstance(output_len, bool) or not isinstance(output_len, int) or output_len < 1:
        raise DatasetError(f"{where}: 'output_len' must be a positive integer, got {output_len!r}")
    return SampleRequest(prompt=prompt, prompt_len=_estimate_tokens(prompt), output_len=output_len)
