"""Reading an OpenAI completion or chat request as vLLM's server does: its prompt's tokens,
its token budget and its streaming options, or a one-line reason to refuse it.

Prompt tokens are counted with the server's tokenizer (`sim-server --tokenizer`, as
`vllm serve` takes it, special tokens the server adds included), or, without one, as the
simulator's word vocabulary: one token per word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jouletune.sim._kvcache import prompt_block_hashes
from jouletune.tokenizer import PromptTokenizer

__all__ = ["BadRequest", "ParsedRequest", "parse_request"]


@dataclass(frozen=True, kw_only=True)
class ParsedRequest:
    """A validated completion or chat request."""

    prompt_tokens: int
    max_tokens: int
    block_hashes: tuple[int, ...]  # of the prompt's full KV blocks (prefix caching)
    stream: bool
    include_usage: bool
    chat: bool


class BadRequest(Exception):
    """A request the server refuses; the message is one line, `status` its HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_request(
    body: Any,
    *,
    chat: bool,
    served: tuple[str, str],
    max_model_len: int,
    tokenizer: PromptTokenizer | None = None,
) -> ParsedRequest:
    """Validate a completion (or chat) request body as vLLM does; raise BadRequest (one line).

    Args:
        body: the request's JSON.
        chat: a chat completion (messages) rather than a completion (prompt).
        served: the names the model answers to (served name, path).
        max_model_len: the longest context the server takes.
        tokenizer: counts the prompt's tokens; None counts words.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if model is not None and model not in served:
        raise BadRequest(f"The model `{model}` does not exist.", status=404)
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("the simulator serves n=1 only")
    tokens, prompt_tokens = _prompt_tokens(body, chat=chat, tokenizer=tokenizer)
    if prompt_tokens < 1:
        raise BadRequest("the prompt is empty")
    limit = max_model_len
    max_tokens = body.get("max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = limit - prompt_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if prompt_tokens + max_tokens > limit:
        raise BadRequest(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )
    min_tokens = body.get("min_tokens", 0)
    if not isinstance(min_tokens, int) or not 0 <= min_tokens <= max_tokens:
        raise BadRequest(f"min_tokens must be an integer in [0, max_tokens], got {min_tokens!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object")
    stream = bool(body.get("stream", False))
    return ParsedRequest(
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        block_hashes=prompt_block_hashes(tokens),
        stream=stream,
        include_usage=stream and bool(options.get("include_usage", False)),
        chat=chat,
    )


def _prompt_tokens(
    body: dict[str, Any], *, chat: bool, tokenizer: PromptTokenizer | None
) -> tuple[Sequence[str | int], int]:
    """(the prompt's tokens, how many the server counts: special tokens included). A prompt
    of token ids is counted as given; text through the tokenizer, or word by word."""
    if chat:
        text = " ".join(_chat_words(body))
    else:
        prompt = body.get("prompt")
        words = _prompt_words(prompt)
        if not words or not isinstance(words[0], str):
            return words, len(words)  # token ids: taken as they are
        text = prompt if isinstance(prompt, str) else " ".join(str(w) for w in words)
    if tokenizer is None:
        split = text.split()
        return split, len(split)
    ids = tokenizer.encode(text)
    return ids, len(ids) + tokenizer.num_special_tokens


def _prompt_words(prompt: Any) -> Sequence[str | int]:
    """Tokens of a completion prompt: words of a string, or a token-id list."""
    if isinstance(prompt, str):
        return prompt.split()
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return prompt
        if len(prompt) == 1:
            return _prompt_words(prompt[0])
        raise BadRequest("the simulator serves one prompt per request")
    raise BadRequest("prompt must be a string or a list of token ids")


def _chat_words(body: dict[str, Any]) -> list[str]:
    """Tokens of a chat request: the words of every message's text content."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    words: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object")
        content = msg.get("content")
        if isinstance(content, str):
            words += content.split()
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    words += str(part.get("text", "")).split()
    return words
