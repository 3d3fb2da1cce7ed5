"""Continuing a broken stream on another engine.

When an engine dies (or stalls) after tokens went to the client, the request is sent
again with the text already streamed as its start: for chat an assistant message with
``continue_final_message: true, add_generation_prompt: false`` (vLLM renders it without
closing the turn, so generation continues mid-sentence), for completions the prompt plus
the text. The output budget shrinks by what was streamed. This module is pure: it reads
the transcript the relay kept and builds the new request body; the caller does the I/O.
"""

from __future__ import annotations

from typing import Any

from gateway.pipeline.relay import Transcript

_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


def continuation(body: dict[str, Any], transcript: Transcript, *,
                 chat: bool) -> dict[str, Any] | str:
    """The request that continues ``body`` after ``transcript``, or why there is none."""
    if transcript.obstacle:
        return transcript.obstacle
    if transcript.finished:
        return "the answer had already finished"
    if (body.get("n") or 1) != 1:
        return "several choices (n > 1)"
    follow = dict(body)
    for field in _BUDGET_FIELDS:
        budget = body.get(field)
        if isinstance(budget, int):
            if budget - transcript.tokens < 1:
                return "the output budget is spent"
            follow[field] = budget - transcript.tokens
    if isinstance(body.get("min_tokens"), int):
        follow["min_tokens"] = max(0, body["min_tokens"] - transcript.tokens)
    if chat:
        messages = list(body.get("messages") or [])
        last = messages[-1] if messages else None
        if (body.get("continue_final_message") and isinstance(last, dict)
                and last.get("role") == "assistant" and isinstance(last.get("content"), str)):
            messages[-1] = {**last, "content": last["content"] + transcript.text}
        else:
            messages.append({"role": "assistant", "content": transcript.text})
        follow.update(messages=messages, continue_final_message=True,
                      add_generation_prompt=False)
        return follow
    if body.get("echo"):
        return "echo is set"
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        follow["prompt"] = prompt + transcript.text
    elif isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        follow["prompt"] = [prompt[0] + transcript.text]
    else:
        return "the prompt is not text"
    return follow
