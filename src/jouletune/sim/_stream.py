"""One request's response: its tokens as server-sent events, or collected for a plain reply.

Built for >= 1,000 concurrent streams on one core: each chunk is pre-encoded as (head, tail)
bytes around the token text, and written straight to the stream's transport in HTTP/1.1
chunked framing — one write per stream per engine step, no per-token JSON encoding.
"""

from __future__ import annotations

import asyncio
import json

from jouletune.sim._engine import SimRequest, StepListener
from jouletune.sim._requests import ParsedRequest

__all__ = ["SseStream", "usage"]

# Synthetic vocabulary cycled through for output text; like mk_model.py's tokenizer, every
# word " t<N>" is one token. 3.. skips the special tokens <s>, </s>, <unk>.
_TOKEN_TEXTS = [f" t{3 + (i * 7919) % 128_000}".encode() for i in range(4096)]


class SseStream(StepListener):
    """Writes one request's tokens as SSE chunks (or collects them for a plain response)."""

    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        created: int,
        parsed: ParsedRequest,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.request_id = request_id
        self.stream = parsed.stream
        self.chat = parsed.chat
        self.include_usage = parsed.include_usage
        self.done: asyncio.Future[None] = loop.create_future()
        self.parts: list[bytes] = []
        self.broken = False
        self._transport: asyncio.Transport | None = None
        rid, mdl = json.dumps(request_id), json.dumps(model)
        if parsed.chat:
            self._head = (
                f'data: {{"id":{rid},"object":"chat.completion.chunk","created":{created},'
                f'"model":{mdl},"choices":[{{"index":0,"delta":{{"content":"'
            ).encode()
            self._tail = b'"},"logprobs":null,"finish_reason":%s}]}\n\n'
        else:
            self._head = (
                f'data: {{"id":{rid},"object":"text_completion","created":{created},'
                f'"model":{mdl},"choices":[{{"index":0,"text":"'
            ).encode()
            self._tail = (
                b'","logprobs":null,"finish_reason":%s,"stop_reason":null,'
                b'"token_ids":null,"prompt_token_ids":null}],"usage":null}\n\n'
            )
        self._model_json = mdl
        self._created = created
        self._sent = 0  # tokens written: the engine may be steps ahead of the API server

    def attach(self, transport: asyncio.Transport) -> None:
        """Write chunks to `transport` (after the response headers went out)."""
        self._transport = transport

    def on_tokens(self, req: SimRequest, count: int, t_s: float) -> None:
        self._sent += count
        text = _TOKEN_TEXTS[self._sent % len(_TOKEN_TEXTS)]
        if not self.stream:
            self.parts.append(text)
            return
        last = self._sent >= req.max_tokens
        payload = self._head + text + (self._tail % (b'"length"' if last else b"null"))
        if self.chat and self._sent == 1:
            payload = self._role_chunk() + payload
        self._write(payload)

    def on_finish(self, req: SimRequest, t_s: float) -> None:
        if self.stream and req.finish_reason != "abort":
            tail = b""
            if self.include_usage:
                tail += self._usage_chunk(req)
            self._write(tail + b"data: [DONE]\n\n")
        if not self.done.done():
            self.done.set_result(None)

    def _write(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self.broken = True
            return
        # HTTP/1.1 chunked framing, as aiohttp's own writer would add it.
        transport.write(b"%x\r\n%b\r\n" % (len(payload), payload))

    def _role_chunk(self) -> bytes:
        return (
            f'data: {{"id":{json.dumps(self.request_id)},"object":"chat.completion.chunk",'
            f'"created":{self._created},"model":{self._model_json},"choices":[{{"index":0,'
            f'"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        ).encode()

    def _usage_chunk(self, req: SimRequest) -> bytes:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        counts = usage(req)
        return (
            f'data: {{"id":{json.dumps(self.request_id)},"object":"{obj}",'
            f'"created":{self._created},"model":{self._model_json},"choices":[],'
            f'"usage":{json.dumps(counts, separators=(",", ":"))}}}\n\n'
        ).encode()


def usage(req: SimRequest) -> dict[str, int]:
    """The OpenAI `usage` object of a request."""
    return {
        "prompt_tokens": req.prompt_tokens,
        "total_tokens": req.prompt_tokens + req.output_tokens,
        "completion_tokens": req.output_tokens,
    }
