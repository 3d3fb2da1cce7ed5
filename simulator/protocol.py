"""The OpenAI wire format as vLLM speaks it: request parsing, simulated text, SSE chunks.

There is one exception, `SimError` (an HTTP status plus vLLM's error fields); the server
turns it into `{"error": {"message", "type", "param", "code"}}` with that status.

Prompt tokens are counted deterministically without a tokenizer:
- chat: per message `<|im_start|>`, role, newline, the whitespace-split words of its text,
  `<|im_end|>` (words + 4); `add_generation_prompt` (default true) adds 3 more;
  `continue_final_message` leaves the last message open (one token less).
- completions: one BOS token plus the prompt's whitespace-split words (or its token ids).

Output is one pseudo-word per token (" word"), chosen by a stable hash of the seed, the
model and the prompt. For chat the hash excludes a final assistant message that is being
continued and starts at its word count, so a continued request yields exactly the rest of
the original answer: what a gateway's mid-stream failover needs to test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from simulator.config import SimConfig
from simulator.timemodel import block_hashes

WORDS: tuple[bytes, ...] = (
    b" the", b" of", b" and", b" to", b" in", b" is", b" was", b" for", b" on", b" are", b" with",
    b" as", b" at", b" be", b" by", b" this", b" had", b" not", b" but", b" from", b" or",
    b" have", b" an", b" they", b" which", b" one", b" you", b" were", b" all", b" we", b" her",
    b" she", b" there", b" would", b" their", b" will", b" when", b" who", b" him", b" been",
    b" has", b" more", b" if", b" no", b" out", b" do", b" so", b" can", b" what", b" up",
    b" said", b" about", b" other", b" into", b" than", b" its", b" time", b" only", b" could",
    b" new", b" them", b" man", b" some", b" these",
)  # fmt: skip
DONE = b"data: [DONE]\n\n"


class SimError(Exception):
    """A request the simulator answers with an OpenAI-shaped error."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param

    def body(self) -> bytes:
        """The JSON error body, as vLLM's `ErrorResponse` serializes it."""
        return error_body(self.status, self.err_type, self.message, self.param)


def error_body(status: int, err_type: str, message: str, param: str | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as bytes."""
    error = {"message": message, "type": err_type, "param": param, "code": status}
    return orjson.dumps({"error": error})


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated chat or completion request, reduced to what the simulator needs."""

    chat: bool
    model: str
    lora: str | None
    prompt_tokens: int
    block_hashes: tuple[int, ...]
    max_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    text_key: int
    text_offset: int


def parse_chat(body: Any, config: SimConfig, loras: Collection[str]) -> GenerationRequest:
    """Validate a `/v1/chat/completions` body."""
    body = _object(body)
    tokens, turns, offset = chat_tokens(body)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    return _generation(body, config, loras, tokens, turns, max_tokens, offset, chat=True)


def chat_tokens(body: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]], int]:
    """The prompt tokens of a chat body's `messages`, its (role, text) turns, and the
    word count of a final message being continued (else 0)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("`messages` must be a non-empty list", "messages")
    continue_final = bool(body.get("continue_final_message", False))
    add_generation_prompt = bool(body.get("add_generation_prompt", True))
    if continue_final and add_generation_prompt:
        raise _bad_request(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        )
    tokens: list[str] = []
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad_request("each message needs a string `role`", "messages")
        role, text = message["role"], _content_text(message.get("content"))
        tokens += ("<|im_start|>", role, "\n", *text.split(), "<|im_end|>")
        turns.append((role, text))
    offset = 0
    if continue_final:
        tokens.pop()
        offset = len(turns.pop()[1].split())
    if add_generation_prompt:
        tokens += ("<|im_start|>", "assistant", "\n")
    return tokens, turns, offset


def parse_completion(body: Any, config: SimConfig, loras: Collection[str]) -> GenerationRequest:
    """Validate a `/v1/completions` body (one prompt: a string or a list of token ids)."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    tokens: list[str | int]
    if isinstance(prompt, str):
        tokens = ["<s>", *prompt.split()]
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        tokens = ["<s>", *prompt]
    else:
        raise _bad_request("`prompt` must be a string or a list of token ids", "prompt")
    return _generation(body, config, loras, tokens, prompt, body.get("max_tokens"), 0, chat=False)


def _generation(
    body: dict[str, Any],
    config: SimConfig,
    loras: Collection[str],
    tokens: list[Any],
    text_source: object,
    max_tokens: object,
    offset: int,
    *,
    chat: bool,
) -> GenerationRequest:
    model = body.get("model") or config.model
    if model != config.model and model not in loras:
        raise SimError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
    lora = None if model == config.model else str(model)
    stream = bool(body.get("stream", False))
    stream_options = body.get("stream_options")
    if stream_options is not None and not stream:
        raise _bad_request("Stream options can only be defined when `stream=True`.")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    prompt_tokens = len(tokens)
    limit = config.max_model_len
    finish_reason = "length"
    if max_tokens is None:
        if prompt_tokens >= limit:
            raise _bad_request(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"request has {prompt_tokens} input tokens. Please reduce the length of "
                "the input messages."
            )
        max_tokens = min(config.default_max_tokens, limit - prompt_tokens)
        if max_tokens == config.default_max_tokens:
            finish_reason = "stop"
    elif type(max_tokens) is not int or max_tokens < 1:
        raise _bad_request(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    elif prompt_tokens + max_tokens > limit:
        raise _bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )
    hashes = block_hashes(tokens, config.block_size, lora) if config.prefix_caching else ()
    digest = hashlib.blake2b(
        orjson.dumps([config.seed, model, text_source]),
        digest_size=4,
    ).digest()
    return GenerationRequest(
        chat=chat,
        model=str(model),
        lora=lora,
        prompt_tokens=prompt_tokens,
        block_hashes=hashes,
        max_tokens=max_tokens,
        finish_reason=finish_reason,
        stream=stream,
        include_usage=include_usage,
        text_key=int.from_bytes(digest, "little"),
        text_offset=offset,
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad_request("request body must be a JSON object")
    return body


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _bad_request(message: str, param: str | None = None) -> SimError:
    return SimError(400, "BadRequestError", message, param)


def word_index(key: int, position: int) -> int:
    """Index into the 64 `WORDS` of the token at `position` of the text seeded by `key`."""
    return (((key + position * 0x9E3779B1) * 0x85EBCA77) & 0xFFFFFFFF) >> 26


def completion_text(request: GenerationRequest, count: int) -> str:
    """The first `count` generated tokens as one string."""
    key, start = request.text_key, request.text_offset
    return b"".join(WORDS[word_index(key, p)] for p in range(start, start + count)).decode()


class ChunkEncoder:
    """Pre-encoded SSE frames of one streamed response; per token it only joins bytes."""

    __slots__ = ("_final_tail", "_head", "_key", "_offset", "_prefix", "_request", "_tail")

    def __init__(self, request: GenerationRequest, request_id: str, created: int) -> None:
        self._request = request
        self._key = request.text_key
        self._offset = request.text_offset
        obj = b"chat.completion.chunk" if request.chat else b"text_completion"
        self._prefix = b"".join((
            b'data: {"id":', orjson.dumps(request_id), b',"object":"', obj,
            b'","created":', str(created).encode(), b',"model":',
            orjson.dumps(request.model), b',"choices":[',
        ))  # fmt: skip
        finish = orjson.dumps(request.finish_reason)
        if request.chat:
            self._head = self._prefix + b'{"index":0,"delta":{"content":"'
            self._tail = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
            self._final_tail = (
                b'"},"logprobs":null,"finish_reason":' + finish + b',"stop_reason":null}]}\n\n'
            )
        else:
            self._head = self._prefix + b'{"index":0,"text":"'
            self._tail = b'","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self._final_tail = (
                b'","logprobs":null,"finish_reason":' + finish + b',"stop_reason":null}]}\n\n'
            )

    def opening(self) -> bytes:
        """What comes before the first token: the role event of a chat stream."""
        return self.role() if self._request.chat else b""

    def closing(self, completion_tokens: int) -> bytes:
        """What comes after the last token: the usage event if asked for, `[DONE]`."""
        if self._request.include_usage:
            return self.usage(completion_tokens) + DONE
        return DONE

    def role(self) -> bytes:
        """The chat stream's first event: the assistant role with empty content."""
        return self._prefix + (
            b'{"index":0,"delta":{"role":"assistant","content":""},'
            b'"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def tokens(self, parts: list[bytes], start: int, end: int, final: bool) -> None:
        """Append the events of tokens `start..end-1` to `parts`; `final` marks the last."""
        head, tail, key = self._head, self._tail, self._key
        position = self._offset + start
        for _ in range(start, end - 1 if final else end):
            parts += (head, WORDS[word_index(key, position)], tail)
            position += 1
        if final:
            parts += (head, WORDS[word_index(key, position)], self._final_tail)

    def usage(self, completion_tokens: int) -> bytes:
        """The `include_usage` event: no choices, only the token counts."""
        prompt = self._request.prompt_tokens
        usage = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion_tokens,
            "completion_tokens": completion_tokens,
        }
        return self._prefix + b'],"usage":' + orjson.dumps(usage) + b"}\n\n"


def response_body(request: GenerationRequest, request_id: str, created: int) -> bytes:
    """The non-streamed `chat.completion` / `text_completion` object."""
    text = completion_text(request, request.max_tokens)
    choice: dict[str, Any]
    if request.chat:
        message = {"role": "assistant", "content": text, "tool_calls": []}
        choice = {"index": 0, "message": message, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
    choice |= {"finish_reason": request.finish_reason, "stop_reason": None}
    usage = {
        "prompt_tokens": request.prompt_tokens,
        "total_tokens": request.prompt_tokens + request.max_tokens,
        "completion_tokens": request.max_tokens,
        "prompt_tokens_details": None,
    }
    return orjson.dumps({
        "id": request_id,
        "object": "chat.completion" if request.chat else "text_completion",
        "created": created,
        "model": request.model,
        "choices": [choice],
        "usage": usage,
    })  # fmt: skip
