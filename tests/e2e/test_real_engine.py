"""The official openai client through Sluice to a real vLLM CPU engine."""

from __future__ import annotations

import time

import httpx
import orjson
from openai import OpenAI

from loadtests.stack import RealStack
from tests.e2e.conftest import TEST_LORA

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def client(stack: RealStack) -> OpenAI:
    return OpenAI(base_url=stack.gateway + "/v1", api_key="unused", max_retries=0, timeout=120)


def sse_events(text: str) -> list[str]:
    return [block[6:] for block in text.split("\n\n") if block.startswith("data: ")]


def test_non_streamed_chat_answers_paris(stack: RealStack) -> None:
    reply = client(stack).chat.completions.create(
        model=stack.model, messages=FRANCE, temperature=0, max_tokens=32)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_streamed_chat_content_then_usage_then_done(stack: RealStack) -> None:
    stream = client(stack).chat.completions.create(
        model=stack.model, messages=FRANCE, temperature=0, max_tokens=32, stream=True,
        stream_options={"include_usage": True})
    kinds: list[str] = []
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            kinds.append("content")
            text += chunk.choices[0].delta.content
        elif not chunk.choices and chunk.usage is not None:
            kinds.append("usage")
    assert kinds.count("content") >= 2
    assert kinds[-1] == "usage"
    assert kinds.count("usage") == 1
    assert "Paris" in text
    # The raw stream ends with [DONE] right after the usage chunk.
    raw = httpx.post(stack.gateway + "/v1/chat/completions", timeout=120, json={
        "model": stack.model, "messages": FRANCE, "max_tokens": 8, "stream": True,
        "stream_options": {"include_usage": True}}).text
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    assert orjson.loads(events[-2])["choices"] == []


def test_completions_streamed_and_not(stack: RealStack) -> None:
    openai = client(stack)
    whole = openai.completions.create(model=stack.model, prompt="The capital of France is",
                                      max_tokens=8, temperature=0)
    assert whole.choices[0].text
    pieces = [c.choices[0].text for c in openai.completions.create(
        model=stack.model, prompt="The capital of France is", max_tokens=8,
        temperature=0, stream=True) if c.choices]
    assert len([p for p in pieces if p]) >= 2
    assert "".join(pieces) == whole.choices[0].text


def running_requests(engine: str) -> float:
    for line in httpx.get(engine + "/metrics", timeout=5).text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vllm:num_requests_running missing from the engine's /metrics")


def test_dropped_stream_is_aborted_on_the_engine_within_2s(stack: RealStack) -> None:
    body = {"model": stack.model, "max_tokens": 1000, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell a long story."}]}
    with httpx.Client(timeout=60) as http, \
            http.stream("POST", stack.gateway + "/v1/chat/completions", json=body) as resp:
        chunks = resp.iter_bytes()  # not a for-loop: leaving one early closes the stream
        for _ in range(5):
            next(chunks)
        # The engine publishes its gauges with its step outputs: give it a moment.
        seen_running = time.monotonic()
        while running_requests(stack.engine) != 1:
            assert time.monotonic() - seen_running < 10, "engine never showed the request"
            time.sleep(0.1)
    dropped = time.monotonic()
    while running_requests(stack.engine) != 0:
        assert time.monotonic() - dropped < 2.0, "engine still runs the dropped request"
        time.sleep(0.05)


def test_too_many_tokens_is_400(stack: RealStack) -> None:
    response = httpx.post(stack.gateway + "/v1/chat/completions", timeout=30, json={
        "model": stack.model, "messages": FRANCE, "max_tokens": 5000})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_runtime_lora_adapter_is_served_through_the_gateway(stack: RealStack) -> None:
    loaded = httpx.post(stack.engine + "/v1/load_lora_adapter", timeout=60, json={
        "lora_name": "test-lora", "lora_path": str(TEST_LORA)})
    assert loaded.status_code == 200, loaded.text
    deadline = time.monotonic() + 5
    while "test-lora" not in [m.id for m in client(stack).models.list().data]:
        assert time.monotonic() < deadline, "gateway did not learn about the adapter"
        time.sleep(0.2)
    haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
    answers = {
        model: client(stack).chat.completions.create(
            model=model, messages=haiku, temperature=0, max_tokens=16
        ).choices[0].message.content
        for model in (stack.model, "test-lora")
    }
    assert answers[stack.model] != answers["test-lora"]
