"""Mid-stream failover onto a real vLLM engine: the continuation request it accepts.

The first engine is a simulator serving under the real model's name that dies after a
few tokens; the gateway must continue the stream on the real engine with the text sent
so far as an assistant prefix (``continue_final_message``), which vLLM must accept and
render with the model's real chat template.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from loadtests.stack import RealStack


async def test_stream_broken_on_one_engine_finishes_on_real_vllm(
        stack: RealStack, spawn_sim, start_gateway) -> None:
    doomed = await spawn_sim("--model", stack.model, "--max-model-len", "8192",
                             "--crash-after-tokens", "5", "--decode-step-ms", "5")
    gateway = await start_gateway([doomed.url, stack.engine],
                                  routing={"default": {"strategy": "round_robin"}})
    client = AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0,
                         timeout=120)
    stream = await client.chat.completions.create(
        model=stack.model, stream=True, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    ids, pieces, usage = set(), [], None
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(ids) == 1
    assert usage is not None
    assert usage.completion_tokens == 16  # 5 from the simulator, 11 from vLLM
    assert len(pieces) >= 6  # the simulator's 5 and at least one from vLLM
    assert "".join(pieces[5:]).strip()
