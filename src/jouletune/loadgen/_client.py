"""One streaming request to an OpenAI-compatible server, timed as vLLM's benchmark does.

Send time: the moment the request's last byte was handed to the socket (aiohttp's
`on_request_chunk_sent` trace signal), falling back to the moment before the POST when the
signal did not fire. vLLM stamps before the POST; on Python < 3.12 aiohttp then writes the body
from a separate task that waits behind every other ready callback, so vLLM's stamp adds the
client's own event-loop queueing to TTFT and E2EL (milliseconds when hundreds of streams send
at once). Stamping the write measures the server, not the client.

Token times: each read from the socket is stamped once with `perf_counter()`, and every
server-sent event with non-empty `choices` in that read counts as a token chunk at that time
(vLLM stamps per event; within one read the two agree to microseconds, and one stamp per read
keeps the client fast at thousands of streams).
"""

from __future__ import annotations

import json
import os
import re
from array import array
from dataclasses import dataclass, field
from time import perf_counter
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp

from jouletune.loadgen._dataset import SampleRequest
from jouletune.loadgen._records import RequestRecord

__all__ = [
    "ErrorKind",
    "Outcome",
    "build_body",
    "request_headers",
    "send_time_trace",
    "stream_request",
]

# What went wrong with a request: the server answered an error (`http`), the stream carried
# an error or no token (`stream`), the connection failed or broke (`connection`: the server
# may be gone), or it stalled (`timeout`).
ErrorKind = Literal["http", "stream", "connection", "timeout"]
_MAX_ERROR_CHARS = 300
# A chunk with non-empty `choices`, and one that must be parsed in full (a `usage` object or
# an `error`). Inside JSON strings a quote is escaped, so `"choices"` with bare quotes can only
# be a key: matching the bytes is exact, and spares json.loads on nearly every chunk
# (json.loads was a fifth of the client's CPU at 1,000 streams).
_TOKEN_CHUNK = re.compile(rb'"choices"\s*:\s*\[\s*\{')
_NEEDS_PARSING = re.compile(rb'"usage"\s*:\s*\{|"error"\s*:')


class _SendStamp:
    """Per-request trace context: when the request's last body chunk was written."""

    __slots__ = ("sent_s",)

    def __init__(self) -> None:
        self.sent_s: float | None = None


async def _on_chunk_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    stamp = ctx.trace_request_ctx
    if isinstance(stamp, _SendStamp):
        stamp.sent_s = perf_counter()


def send_time_trace() -> aiohttp.TraceConfig:
    """The trace config a session needs so `stream_request` can stamp the actual send."""
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_on_chunk_sent)
    return trace


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's record plus, for a failure, what kind of failure it was."""

    record: RequestRecord
    error_kind: ErrorKind | None = None


def request_headers() -> dict[str, str]:
    """JSON content type, and a bearer token from OPENAI_API_KEY when set (as vLLM's client)."""
    headers = {"Content-Type": "application/json"}
    if api_key := os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def build_body(request: SampleRequest, *, model: str, chat: bool, ignore_eos: bool) -> bytes:
    """The JSON body of one streaming completion (or chat completion) request."""
    payload: dict[str, Any] = {"model": model, "stream": True}
    if chat:
        payload["messages"] = [{"role": "user", "content": request.prompt}]
        payload["max_completion_tokens"] = request.output_len
    else:
        payload["prompt"] = request.prompt
        payload["max_tokens"] = request.output_len
    payload["stream_options"] = {"include_usage": True}
    if ignore_eos:
        payload["ignore_eos"] = True
    return json.dumps(payload).encode()


@dataclass(slots=True)
class _Stream:
    """Parser state of one response: SSE framing, chunk times, usage."""

    times: array[float] = field(default_factory=lambda: array("d"))
    buffer: bytes = b""
    request_id: str | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None

    def feed(self, data: bytes, now_s: float) -> None:
        buf = self.buffer + data
        if b"\r" in buf:  # SSE allows CRLF line ends; normalise so events end in "\n\n"
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self._event(buf[start:end], now_s)
            start = end + 2
        self.buffer = buf[start:]

    def finish(self, now_s: float) -> None:
        if self.buffer.strip():
            self._event(self.buffer, now_s)
        self.buffer = b""

    def _event(self, event: bytes, now_s: float) -> None:
        # Comments (":ping") and `event:`/`id:` fields are skipped; several `data:` lines of
        # one event join with newlines (the SSE spec; OpenAI-compatible servers send one).
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if not payload or payload == b"[DONE]":
            return
        if (
            self.request_id is not None
            and _TOKEN_CHUNK.search(payload)
            and not _NEEDS_PARSING.search(payload)
        ):
            # Fast path for the bulk of a stream: non-empty choices, no usage, no error.
            self.times.append(now_s)
            return
        self._data(json.loads(payload), now_s)

    def _data(self, obj: Any, now_s: float) -> None:
        if not isinstance(obj, dict):
            return
        if obj.get("choices"):
            self.times.append(now_s)
            if self.request_id is None and isinstance(obj.get("id"), str):
                self.request_id = obj["id"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                self.output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        if obj.get("error") is not None and self.error is None:
            self.error = f"server error in stream: {_one_line(json.dumps(obj['error']))}"


async def stream_request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    index: int,
    expected_output_len: int,
) -> Outcome:
    """Send one streaming request and time it; failures come back as data, never raised."""
    stream = _Stream()
    stamp = _SendStamp()
    posted_s = perf_counter()
    kind: ErrorKind | None = None
    try:
        async with session.post(url, data=body, headers=headers, trace_request_ctx=stamp) as resp:
            if resp.status != 200:
                text = await resp.text(errors="replace")
                kind, stream.error = "http", f"HTTP {resp.status}: {_one_line(text)}"
            else:
                async for data in resp.content.iter_any():
                    stream.feed(data, perf_counter())
                stream.finish(perf_counter())
    except TimeoutError:
        kind, stream.error = "timeout", "no data from the server within the request timeout"
    except aiohttp.ClientError as err:
        kind, stream.error = "connection", f"{type(err).__name__}: {_one_line(str(err))}"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        kind, stream.error = "stream", f"malformed event in the stream: {err}"
    if stream.error is None and not stream.times:
        kind, stream.error = "stream", "the stream ended without a chunk with choices"
    elif stream.error is not None and kind is None:
        kind = "stream"
    send_s = stamp.sent_s if stamp.sent_s is not None else posted_s
    return Outcome(record=_record(stream, index, send_s, expected_output_len), error_kind=kind)


def _record(stream: _Stream, index: int, send_s: float, expected_output_len: int) -> RequestRecord:
    ok = stream.error is None
    return RequestRecord(
        index=index,
        request_id=stream.request_id,
        success=ok,
        error=stream.error,
        send_s=send_s,
        end_s=stream.times[-1] if ok else perf_counter(),
        chunk_times_s=stream.times,
        output_tokens=stream.output_tokens,
        prompt_tokens=stream.prompt_tokens,
        expected_output_len=expected_output_len,
    )


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"
