"""The client's server-sent-events parser: chunk counting, usage and errors, however the
bytes are split across socket reads."""

from __future__ import annotations

import json

import pytest

from jouletune.loadgen._client import _Stream


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _token(i: int, *, spaced: bool = False) -> bytes:
    obj = {"id": "cmpl-1", "choices": [{"index": 0, "text": f" t{i}"}], "usage": None}
    if spaced:  # json.dumps' default separators, as some servers write
        return b"data: " + json.dumps(obj).encode() + b"\n\n"
    return _event(obj)


USAGE = _event(
    {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}}
)
TEXT_LOOKS_LIKE_KEYS = _event(
    {"id": "cmpl-1", "choices": [{"text": '"usage": {"error": 1}, "choices":[{'}]}
)
STREAM = (
    b": ping\n\n"
    + b"".join(_token(i) for i in range(3))
    + _token(3, spaced=True)
    + TEXT_LOOKS_LIKE_KEYS
    + _token(5)
    + USAGE
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("piece", [1, 7, 64, len(STREAM)])
def test_counts_chunks_with_choices_however_split(piece: int) -> None:
    s = _Stream()
    for i in range(0, len(STREAM), piece):
        s.feed(STREAM[i : i + piece], float(i))
    s.finish(1e9)
    assert len(s.times) == 6  # tokens 0-3, the tricky text chunk, token 5; not ping/usage/DONE
    assert (s.request_id, s.output_tokens, s.prompt_tokens, s.error) == ("cmpl-1", 9, 7, None)


def test_crlf_line_ends_and_a_stream_without_final_blank_line() -> None:
    s = _Stream()
    s.feed(_token(0).replace(b"\n", b"\r\n") + USAGE.rstrip(b"\n"), 1.0)
    s.finish(2.0)
    assert list(s.times) == [1.0] and s.output_tokens == 9


def test_error_event_is_recorded() -> None:
    s = _Stream()
    s.feed(_token(0) + _event({"error": {"message": "engine died", "code": 500}}), 1.0)
    assert len(s.times) == 1
    assert s.error is not None and "engine died" in s.error


def test_chunk_with_choices_and_usage_counts_both() -> None:
    # vLLM's continuous_usage_stats: every chunk carries usage.
    chunk = {"id": "x", "choices": [{"text": "a"}], "usage": {"completion_tokens": 1}}
    s = _Stream()
    s.feed(_event(chunk) + _event({**chunk, "usage": {"completion_tokens": 2}}), 1.0)
    assert len(s.times) == 2 and s.output_tokens == 2


def test_malformed_json_raises_for_the_caller_to_record() -> None:
    with pytest.raises(json.JSONDecodeError):
        _Stream().feed(b"data: {not json\n\n", 1.0)
