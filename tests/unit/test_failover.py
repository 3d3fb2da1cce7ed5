"""A broken stream's transcript and the request that continues it."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.pipeline.failover import continuation
from gateway.pipeline.relay import Relay, Transcript


def read_transcript(chunks: list[bytes], *, chat: bool) -> Transcript:
    """The transcript the relay keeps of what it forwarded."""
    relay = Relay(chat=chat, forward_usage=True)
    for chunk in chunks:
        relay.feed(chunk)
    assert relay.fault is None
    return relay.transcript


def sse(*objs: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs)


def chat_chunk(content: str | None = None, *, finish: str | None = None, index: int = 0,
               **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-1", "choices": [
        {"index": index, "delta": delta, "finish_reason": finish}]}


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
        "stream": True}


def test_chat_transcript_joins_content_and_counts_tokens() -> None:
    chunks = [sse(chat_chunk("", role="assistant"), chat_chunk("Hello")),
              sse(chat_chunk(" wor"), chat_chunk("ld"))]
    t = read_transcript(chunks, chat=True)
    assert (t.text, t.tokens, t.finished, t.stream_id) == ("Hello world", 3, False,
                                                           "chatcmpl-1")
    assert t.obstacle is None


def test_chat_continuation_appends_an_assistant_prefix_and_shrinks_the_budget() -> None:
    t = read_transcript([sse(chat_chunk("Hello"), chat_chunk(" there"))], chat=True)
    follow = continuation(CHAT, t, chat=True)
    assert isinstance(follow, dict)
    assert follow["messages"] == [*CHAT["messages"],
                                  {"role": "assistant", "content": "Hello there"}]
    assert follow["continue_final_message"] is True
    assert follow["add_generation_prompt"] is False
    assert follow["max_tokens"] == 8
    assert CHAT["max_tokens"] == 10  # the original body is left alone


def test_chat_continuation_extends_a_prefix_the_client_gave() -> None:
    body = {**CHAT, "continue_final_message": True, "add_generation_prompt": False,
            "messages": [*CHAT["messages"], {"role": "assistant", "content": "Once"}]}
    t = read_transcript([sse(chat_chunk(" upon"))], chat=True)
    follow = continuation(body, t, chat=True)
    assert isinstance(follow, dict)
    assert follow["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert len(follow["messages"]) == 2


def test_completion_continuation_extends_the_prompt() -> None:
    body = {"model": "m", "prompt": "Once", "max_tokens": 5, "min_tokens": 3}
    chunk = {"id": "cmpl-1", "choices": [{"index": 0, "text": " upon", "finish_reason": None}]}
    t = read_transcript([sse(chunk, chunk)], chat=False)
    follow = continuation(body, t, chat=False)
    assert isinstance(follow, dict)
    assert (follow["prompt"], follow["max_tokens"], follow["min_tokens"]) == (
        "Once upon upon", 3, 1)
    listed = continuation({**body, "prompt": ["Once"]}, t, chat=False)
    assert isinstance(listed, dict)
    assert listed["prompt"] == ["Once upon upon"]


def test_what_cannot_be_continued_says_why() -> None:
    several = read_transcript([sse(chat_chunk("a"), chat_chunk("b", index=1))], chat=True)
    assert continuation(CHAT, several, chat=True) == "several choices (n > 1)"
    tools = read_transcript([sse(chat_chunk(None, tool_calls=[{"index": 0}]))], chat=True)
    assert continuation(CHAT, tools, chat=True) == "tool calls were being streamed"
    done = read_transcript([sse(chat_chunk("a", finish="stop"))], chat=True)
    assert continuation(CHAT, done, chat=True) == "the answer had already finished"
    spent = read_transcript([sse(*[chat_chunk("a")] * 10)], chat=True)
    assert continuation(CHAT, spent, chat=True) == "the output budget is spent"
    plain = read_transcript([sse(chat_chunk("a"))], chat=True)
    assert continuation({**CHAT, "n": 2}, plain, chat=True) == "several choices (n > 1)"
    text = read_transcript([sse({"id": "c", "choices": [{"index": 0, "text": "a"}]})],
                           chat=False)
    assert continuation({"prompt": [1, 2, 3]}, text, chat=False) == "the prompt is not text"
    assert continuation({"prompt": "x", "echo": True}, text, chat=False) == "echo is set"


def test_usage_only_and_done_events_are_not_text() -> None:
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3}}
    t = read_transcript([sse(chat_chunk("a"), usage) + b"data: [DONE]\n\n"], chat=True)
    assert (t.text, t.tokens) == ("a", 1)
