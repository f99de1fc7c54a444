"""Workloads: the prompts a run sends and how many tokens each asks for, counted with the
model's own tokenizer (`jouletune.tokenizer`).

- `random`: prompts whose token count is exactly the requested length N (uniform in
  [len * (1 - range_ratio), len * (1 + range_ratio)], as in vLLM), special tokens the server
  adds included. With a model's tokenizer they are built by vLLM's own method (RandomDataset in
  vllm/benchmarks/datasets): consecutive non-special token ids from a random offset, decoded,
  re-encoded and trimmed or padded until the text encodes to its target. With the
  simulator's word vocabulary (`words`) a prompt is N words `t<id>`, ids uniform in
  [3, 128255]: one token each, by construction.
- `sharegpt`: ShareGPT JSON (a list of `{"conversations": [{"from", "value"}, ...]}`); the
  first turn is the prompt, the second turn's token count sets max_tokens unless
  `sharegpt_output_len` fixes it. Conversations with fewer than two turns or an output under
  4 tokens are skipped (vLLM's filter).
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
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from jouletune.tokenizer import PromptTokenizer, WordTokenizer

__all__ = ["DatasetError", "SampleRequest", "load_requests"]

# Token ids 0-2 are <s>, </s> and <unk> in mk_model.py's vocabulary; 128255 is its last id.
_MIN_TOKEN_ID = 3
_MAX_TOKEN_ID = 128255
_MIN_SHAREGPT_OUTPUT_LEN = 4  # vLLM's `is_valid_sequence` minimum
_MAX_RETRIES = 10  # vLLM's gen_prompt_decode_to_target_len budget


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SampleRequest:
    """One request to send.

    Attributes:
        prompt: the prompt text.
        prompt_len: prompt tokens the server will count (special tokens included).
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
    tokenizer: PromptTokenizer,
    dataset_path: Path | None = None,
    random_input_len: int = 1024,
    random_output_len: int = 128,
    random_range_ratio: float = 0.0,
    sharegpt_output_len: int | None = None,
) -> Sequence[SampleRequest]:
    """Build the `num_prompts` requests of a workload (random prompts of a model's tokenizer
    are built as they are first read).

    Raises:
        DatasetError: a missing, empty or malformed dataset file.
    """
    if dataset == "random":
        rng = np.random.default_rng(seed)
        lengths = _random_lengths(
            rng, num_prompts, random_input_len, random_output_len, random_range_ratio
        )
        if isinstance(tokenizer, WordTokenizer):
            return _WordPrompts(lengths, rng)
        return _TokenPrompts(lengths, rng, tokenizer)
    if dataset_path is None:
        raise DatasetError(f"dataset {dataset!r} needs --dataset-path")
    text = _read(dataset_path)
    if dataset == "sharegpt":
        entries = _sharegpt_entries(dataset_path, text, sharegpt_output_len, tokenizer)
    else:
        entries = _custom_entries(dataset_path, text, tokenizer)
    random.Random(seed).shuffle(entries)
    return list(itertools.islice(itertools.cycle(entries), num_prompts))


def _random_lengths(
    rng: np.random.Generator, n: int, input_len: int, output_len: int, range_ratio: float
) -> list[tuple[int, int]]:
    """(prompt tokens, output tokens) of each request, drawn as vLLM draws them."""
    in_lo, in_hi = (
        math.floor(input_len * (1 - range_ratio)),
        math.ceil(input_len * (1 + range_ratio)),
    )
    out_lo = math.floor(output_len * (1 - range_ratio))
    out_hi = math.ceil(output_len * (1 + range_ratio))
    in_lens = rng.integers(max(1, in_lo), in_hi + 1, size=n)
    out_lens = rng.integers(max(1, out_lo), out_hi + 1, size=n)
    return [(int(i), int(o)) for i, o in zip(in_lens, out_lens, strict=True)]


class _LazyPrompts(Sequence[SampleRequest]):
    """Prompts of drawn lengths, each built when first read (`_get` says how): a long
    duration-bound run lists far more prompts than it sends."""

    def __init__(self, lengths: list[tuple[int, int]]) -> None:
        self._lengths = lengths

    def __len__(self) -> int:
        return len(self._lengths)

    @overload
    def __getitem__(self, index: int) -> SampleRequest: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SampleRequest]: ...
    def __getitem__(self, index: int | slice) -> SampleRequest | Sequence[SampleRequest]:
        if isinstance(index, slice):
            return _View(self, range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._get(index)

    def _get(self, index: int) -> SampleRequest:
        raise NotImplementedError


class _WordPrompts(_LazyPrompts):
    """The word vocabulary's prompts: N random words `t<id>`, one token each (the generator,
    and the random stream, of every committed H100 run, which the fidelity benchmark replays).

    Prompt k's words follow prompts 0..k-1's in the random stream, so prompts are built in
    order, up to the highest index read: a run that sends a few hundred of 100,000 listed
    prompts builds only those, and a replay rebuilds them just as cheaply.
    """

    def __init__(self, lengths: list[tuple[int, int]], rng: np.random.Generator) -> None:
        super().__init__(lengths)
        self._rng = rng
        self._built: list[SampleRequest] = []
        self._lock = threading.Lock()  # the bench's prefetch thread builds too

    def _get(self, index: int) -> SampleRequest:
        with self._lock:
            while len(self._built) <= index:
                in_len, out_len = self._lengths[len(self._built)]
                ids = self._rng.integers(_MIN_TOKEN_ID, _MAX_TOKEN_ID + 1, size=in_len)
                prompt = "t" + " t".join(map(str, ids.tolist()))
                self._built.append(
                    SampleRequest(prompt=prompt, prompt_len=in_len, output_len=out_len)
                )
        return self._built[index]


class _TokenPrompts(_LazyPrompts):
    """vLLM's random prompts of a model's tokenizer, each built when first read, in any order:
    each costs a decode/re-encode loop."""

    def __init__(
        self, lengths: list[tuple[int, int]], rng: np.random.Generator, tokenizer: PromptTokenizer
    ) -> None:
        super().__init__(lengths)
        self._tokenizer = tokenizer
        self._allowed = np.array(sorted(set(range(tokenizer.vocab_size)) - tokenizer.special_ids))
        self._offsets = rng.integers(0, tokenizer.vocab_size, size=len(lengths))
        self._seed = int(rng.integers(0, 2**32))
        self._built: dict[int, SampleRequest] = {}

    def _get(self, index: int) -> SampleRequest:
        if index not in self._built:
            self._built[index] = self._build(index)
        return self._built[index]

    def _build(self, index: int) -> SampleRequest:
        """Consecutive allowed ids from the request's offset, adjusted until the text encodes
        to exactly its target (the special tokens the server adds counted in)."""
        in_len, out_len = self._lengths[index]
        tokenizer = self._tokenizer
        target = max(1, in_len - tokenizer.num_special_tokens)
        window = self._offsets[index] + index + np.arange(target)
        ids = self._allowed[window % len(self._allowed)].tolist()
        rng = np.random.default_rng([self._seed, index])
        prompt = _decode_to_length(tokenizer, ids, target, rng)
        return SampleRequest(prompt=prompt, prompt_len=tokenizer.count(prompt), output_len=out_len)


class _View(Sequence[SampleRequest]):
    """A slice of lazily built prompts that builds nothing until read."""

    def __init__(self, parent: Sequence[SampleRequest], indices: range) -> None:
        self._parent = parent
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, index: int) -> SampleRequest: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[SampleRequest]: ...
    def __getitem__(self, index: int | slice) -> SampleRequest | Sequence[SampleRequest]:
        if isinstance(index, slice):
            return _View(self._parent, self._indices[index])
        return self._parent[self._indices[index]]


def _decode_to_length(
    tokenizer: PromptTokenizer, ids: list[int], target: int, rng: np.random.Generator
) -> str:
    """vLLM's gen_prompt_decode_to_target_len: decode, re-encode, then pad with random ids or
    trim, until the text encodes to `target` tokens (or the retries run out)."""
    for _ in range(_MAX_RETRIES):
        prompt = tokenizer.decode(ids)
        ids = tokenizer.encode(prompt)
        if len(ids) < target:
            ids += rng.integers(0, tokenizer.vocab_size, size=target - len(ids)).tolist()
        elif len(ids) > target:
            ids = ids[:target]
        else:
            return prompt
    return tokenizer.decode(ids)


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


def _sharegpt_entries(
    path: Path, text: str, output_len: int | None, tokenizer: PromptTokenizer
) -> list[SampleRequest]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: ShareGPT data must be a JSON list of conversations")
    entries = []
    for conv in _conversations(data):
        prompt, completion = conv[0], conv[1]
        out = output_len if output_len is not None else len(tokenizer.encode(completion))
        if out < _MIN_SHAREGPT_OUTPUT_LEN:
            continue
        entries.append(
            SampleRequest(prompt=prompt, prompt_len=tokenizer.count(prompt), output_len=out)
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


def _custom_entries(path: Path, text: str, tokenizer: PromptTokenizer) -> list[SampleRequest]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entries.append(_custom_entry(path, lineno, line, tokenizer))
    return entries


def _custom_entry(path: Path, lineno: int, line: str, tokenizer: PromptTokenizer) -> SampleRequest:
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
    return SampleRequest(prompt=prompt, prompt_len=tokenizer.count(prompt), output_len=output_len)
