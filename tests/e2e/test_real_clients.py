"""The official openai SDK's Responses API through Sluice to a real vLLM CPU engine,
streamed and not (vLLM serves ``/v1/responses``)."""

from __future__ import annotations

import httpx
from openai import OpenAI

from loadtests.stack import RealStack


def serves_responses(stack: RealStack) -> bool:
    """Whether the gateway has the route (an unknown route is a 404 ``not_found``)."""
    answer = httpx.post(stack.gateway + "/v1/responses", json={}, timeout=30)
    return not (answer.status_code == 404 and answer.json()["error"]["code"] == "not_found")


def test_responses_api_streamed_and_not_on_the_real_engine(stack: RealStack) -> None:
    assert serves_responses(stack)
    client = OpenAI(base_url=stack.gateway + "/v1", api_key="unused", max_retries=0,
                    timeout=120)
    question = "What is the capital of France?"
    whole = client.responses.create(model=stack.model, input=question, temperature=0,
                                    max_output_tokens=32)
    assert whole.status == "completed"
    assert "Paris" in whole.output_text
    types, text = [], ""
    for event in client.responses.create(model=stack.model, input=question, temperature=0,
                                         max_output_tokens=32, stream=True):
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") >= 2
    assert text == whole.output_text
