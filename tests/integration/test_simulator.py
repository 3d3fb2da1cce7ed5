"""The simulator over real sockets: wire format, LoRA, metrics, batching and faults."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimConfig

StartSim = Callable[..., Awaitable[str]]
FAST_SIM = SimConfig(prefill_base_ms=2.0, decode_step_ms=2.0)  # as the `sim_server` fixture
ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def chat_body(content: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "sim-model", "messages": [{"role": "user", "content": content}]} | fields


async def sse(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    """All `data:` payloads of a streamed response (JSON decoded, `[DONE]` kept as text)."""
    events: list[Any] = []
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def read_tokens(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    into: list[str],
    arm: httpx.AsyncClient | None = None,
    armed_at: list[int] | None = None,
) -> None:
    """Stream a chat completion, appending each content event to `into` as it arrives.

    With `arm`, after the third token that client arms a crash two tokens later and the
    threshold is appended to `armed_at`.
    """
    async with client.stream("POST", CHAT, json=body) as response:
        async for line in response.aiter_lines():
            assert line != "data: [DONE]"
            if '"content":" ' not in line:
                continue
            into.append(line)
            if arm is not None and len(into) == 3:
                delivered = (await arm.get("/sim/faults")).json()["tokens_delivered"]
                await arm.post("/sim/faults", json={"crash_after_tokens": delivered + 2})
                if armed_at is not None:
                    armed_at.append(delivered + 2)


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """One sample of the simulator's `/metrics` (labels must match where given)."""
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"{name} {labels} not exposed")


async def eventually(client: httpx.AsyncClient, name: str, value: float, within: float) -> None:
    deadline = time.monotonic() + within
    while (current := await metric(client, name)) != value:
        assert time.monotonic() < deadline, f"{name} stayed {current}, expected {value}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def client(sim_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim_server, timeout=10) as client:
        yield client


async def test_streamed_chat_with_usage(client: httpx.AsyncClient) -> None:
    body = chat_body(max_tokens=5, stream=True, stream_options={"include_usage": True})
    events = await sse(client, CHAT, body)
    role, *content, usage, done = events
    assert done == "[DONE]"
    assert role["object"] == "chat.completion.chunk"
    assert role["id"].startswith("chatcmpl-")
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert len(content) == 5
    assert {event["id"] for event in events[:-1]} == {role["id"]}
    assert [event["choices"][0]["finish_reason"] for event in content] == [None] * 4 + ["length"]
    assert all(re.fullmatch(r" [a-z]+", e["choices"][0]["delta"]["content"]) for e in content)
    # 2 words + 4 template tokens for the message + 3 for the generation prompt.
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


async def test_stream_without_usage_ends_with_done(client: httpx.AsyncClient) -> None:
    events = await sse(client, CHAT, chat_body(max_tokens=2, stream=True))
    assert events[-1] == "[DONE]"
    assert all(event["choices"] for event in events[:-1])
    assert len(events) == 4  # role, two tokens, [DONE]


async def test_non_streamed_chat_matches_the_stream(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body("same prompt", max_completion_tokens=6))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 6
    events = await sse(client, CHAT, chat_body("same prompt", max_tokens=6, stream=True))
    streamed = "".join(e["choices"][0]["delta"]["content"] for e in events[1:-1])
    assert choice["message"]["content"] == streamed
    assert len(streamed.split()) == 6


async def test_completions_streamed_and_not(client: httpx.AsyncClient) -> None:
    body = {"model": "sim-model", "prompt": "one two three", "max_tokens": 3}
    response = await client.post("/v1/completions", json=body)
    full = response.json()
    assert full["object"] == "text_completion"
    assert full["id"].startswith("cmpl-")
    assert full["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "prompt_tokens_details": None,
    }
    events = await sse(client, "/v1/completions", body | {"stream": True})
    assert events[-1] == "[DONE]"
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == full["choices"][0]["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"


async def test_without_max_tokens_the_model_stops_at_the_default(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"default_max_tokens": 3}))
    async with httpx.AsyncClient(base_url=url) as client:
        body = (await client.post(CHAT, json=chat_body())).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(model="nope", max_tokens=1))
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


async def test_too_long_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(max_tokens=2040))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400
    assert error["param"] is None
    assert error["message"].startswith(
        "This model's maximum context length is 2048 tokens. However, you requested 2049"
        " tokens (9 in the messages, 2040 in the completion)."
    )


async def test_invalid_requests_are_400(client: httpx.AsyncClient) -> None:
    not_json = await client.post(CHAT, content=b"{nope")
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "BadRequestError"
    no_messages = await client.post(CHAT, json={"model": "sim-model"})
    assert no_messages.status_code == 400
    both = chat_body(continue_final_message=True, add_generation_prompt=True)
    assert (await client.post(CHAT, json=both)).status_code == 400


async def test_continuation_yields_the_rest_of_the_answer(client: httpx.AsyncClient) -> None:
    full = (await client.post(CHAT, json=chat_body("tell me", max_tokens=10))).json()
    text = full["choices"][0]["message"]["content"]
    words = text.split(" ")[1:]
    sent = "".join(f" {w}" for w in words[:4])
    continued = chat_body(
        "tell me",
        max_tokens=6,
        continue_final_message=True,
        add_generation_prompt=False,
    )
    continued["messages"].append({"role": "assistant", "content": sent})
    rest = (await client.post(CHAT, json=continued)).json()
    assert sent + rest["choices"][0]["message"]["content"] == text
    assert rest["usage"]["prompt_tokens"] == (2 + 4) + (4 + 3)  # the last message stays open


async def test_lora_load_list_serve_unload(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"max_loras": 2}))
    async with httpx.AsyncClient(base_url=url) as client:
        load = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "ad1", "lora_path": "/a/1"}
        )
        assert load.status_code == 200
        assert load.text == "Success: LoRA adapter 'ad1' added successfully."
        again = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "ad1", "lora_path": "/a/1"}
        )
        assert again.status_code == 400
        assert again.json()["error"]["code"] == 400
        second = {"lora_name": "ad2", "lora_path": "/a/2"}
        assert (await client.post("/v1/load_lora_adapter", json=second)).status_code == 200
        third = {"lora_name": "ad3", "lora_path": "/a/3"}
        assert (await client.post("/v1/load_lora_adapter", json=third)).status_code == 400

        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        cards = {card["id"]: card for card in models["data"]}
        assert set(cards) == {"sim-model", "ad1", "ad2"}
        assert cards["sim-model"]["parent"] is None
        assert cards["sim-model"]["max_model_len"] == 2048
        assert cards["ad1"]["parent"] == "sim-model"
        assert cards["ad1"]["root"] == "/a/1"
        assert cards["ad1"]["owned_by"] == "vllm"

        served = await client.post(CHAT, json=chat_body(model="ad1", max_tokens=3))
        assert served.status_code == 200
        assert served.json()["model"] == "ad1"
        base = await client.post(CHAT, json=chat_body(max_tokens=3))
        assert base.json()["choices"][0]["message"] != served.json()["choices"][0]["message"]

        unload = await client.post("/v1/unload_lora_adapter", json={"lora_name": "ad1"})
        assert unload.status_code == 200
        assert unload.text == "Success: LoRA adapter 'ad1' removed successfully."
        missing = await client.post("/v1/unload_lora_adapter", json={"lora_name": "ad1"})
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "NotFoundError"
        gone = await client.post(CHAT, json=chat_body(model="ad1", max_tokens=3))
        assert gone.status_code == 404


async def test_metrics_use_vllm_names_and_count(client: httpx.AsyncClient) -> None:
    await client.post(CHAT, json=chat_body(max_tokens=5))
    text = (await client.get("/metrics")).text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert f'{name}{{engine="0",' in text
        assert re.search(rf'^{re.escape(name)}{{[^}}]*model_name="sim-model"', text, re.M)
    assert re.search(r'^vllm:lora_requests_info\{max_lora="4",', text, re.M)
    assert await metric(client, "vllm:generation_tokens_total") == 5
    assert await metric(client, "vllm:prompt_tokens_total") == 9
    assert await metric(client, "vllm:request_success_total", finished_reason="length") == 1
    assert await metric(client, "vllm:time_to_first_token_seconds_count") == 1
    assert await metric(client, "vllm:num_requests_running") == 0
    await client.post("/tokenize", json={"prompt": "a b"})
    await client.post("/tokenize", json={"model": "nope", "prompt": "a"})
    await client.post("/no/such/path", json={})
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 1.0' \
        in text
    assert 'http_requests_total{handler="/tokenize",method="POST",status="2xx"} 1.0' in text
    assert 'http_requests_total{handler="/tokenize",method="POST",status="4xx"} 1.0' in text
    assert 'http_requests_total{handler="none",method="POST",status="4xx"} 1.0' in text
    assert 'handler="/metrics"' not in text


async def test_prefix_cache_hits_are_counted_in_tokens(client: httpx.AsyncClient) -> None:
    prompt = " ".join(f"w{i}" for i in range(40))  # 40 + 4 + 3 = 47 tokens: 2 full blocks
    for _ in range(2):
        await client.post(CHAT, json=chat_body(prompt, max_tokens=1))
    assert await metric(client, "vllm:prefix_cache_queries_total") == 94
    assert await metric(client, "vllm:prefix_cache_hits_total") == 32


async def test_running_drops_at_once_when_a_client_goes_away(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"decode_step_ms": 5.0, "max_loras": 1}))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        load = {"lora_name": "ad", "lora_path": "/ad"}
        await client.post("/v1/load_lora_adapter", json=load)
        body = chat_body(model="ad", max_tokens=1500, stream=True)
        async with client.stream("POST", CHAT, json=body) as response:
            lines = response.aiter_lines()
            while "content" not in await anext(lines):
                pass
            assert await metric(client, "vllm:num_requests_running") == 1
            assert await metric(client, "vllm:kv_cache_usage_perc") > 0
            info = await metric(client, "vllm:lora_requests_info", running_lora_adapters="ad")
            assert info == pytest.approx(time.time(), abs=60)
        await eventually(client, "vllm:num_requests_running", 0, within=1.0)
        assert await metric(client, "vllm:kv_cache_usage_perc") == 0
        assert await metric(client, "vllm:request_success_total", finished_reason="abort") == 1


async def test_waiting_request_is_dropped_when_its_client_goes_away(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"max_num_seqs": 1}))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        first = asyncio.create_task(client.post(CHAT, json=chat_body(max_tokens=1500)))
        await eventually(client, "vllm:num_requests_running", 1, within=1.0)
        async with client.stream("POST", CHAT, json=chat_body(max_tokens=5, stream=True)):
            await eventually(client, "vllm:num_requests_waiting", 1, within=1.0)
        await eventually(client, "vllm:num_requests_waiting", 0, within=1.0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await eventually(client, "vllm:num_requests_running", 0, within=1.0)


async def test_continuous_batching_overlaps_requests(start_sim: StartSim) -> None:
    url = await start_sim(SimConfig(prefill_base_ms=0.0, decode_step_ms=20.0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        body = chat_body(max_tokens=10)
        start = time.perf_counter()
        await client.post(CHAT, json=body)
        single = time.perf_counter() - start
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(8)))
        eight = time.perf_counter() - start
    assert all(r.status_code == 200 for r in responses)
    assert single >= 0.2  # 10 steps of 20 ms
    assert eight < 3 * single  # serial would take 8x


async def test_error_rate_fault(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"error_rate": 1.0}))
    async with httpx.AsyncClient(base_url=url) as client:
        failed = await client.post(CHAT, json=chat_body(max_tokens=2, stream=True))
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "InternalServerError"
        assert failed.json()["error"]["code"] == 500
        assert (await client.get("/sim/faults")).json()["error_rate"] == 1.0
        healed = await client.post("/sim/faults", json={"error_rate": 0})
        assert healed.json()["error_rate"] == 0.0
        assert (await client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200
        assert (await client.post("/sim/faults", json={"error_rate": 2})).status_code == 400
        assert (await client.post("/sim/faults", json={"explode": True})).status_code == 400


async def test_hang_fault_holds_tokens_until_cleared(client: httpx.AsyncClient) -> None:
    await client.post("/sim/faults", json={"hang": True})
    body = chat_body(max_tokens=3, stream=True)
    async with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = asyncio.ensure_future(anext(lines))
        done, _ = await asyncio.wait({first}, timeout=0.3)
        assert not done  # headers came, tokens do not
        assert await metric(client, "vllm:num_requests_waiting") == 1
        await client.post("/sim/faults", json={"hang": False})
        rest = [await first, *[line async for line in lines]]
    events = [line for line in rest if line]
    assert events[-1] == "data: [DONE]"
    assert len(events) == 5  # role, 3 tokens, [DONE]


async def test_slow_token_fault_slows_every_token(client: httpx.AsyncClient) -> None:
    await client.post("/sim/faults", json={"slow_token_ms": 50})
    start = time.perf_counter()
    await client.post(CHAT, json=chat_body(max_tokens=4))
    assert time.perf_counter() - start >= 0.2


async def test_crash_after_tokens_kills_the_engine_mid_stream(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"crash_after_tokens": 5}))
    tokens: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await read_tokens(client, chat_body(max_tokens=20, stream=True), tokens)
    assert len(tokens) == 5
    async with httpx.AsyncClient(base_url=url, timeout=2) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get("/health")


async def test_crash_armed_at_runtime_cuts_a_running_stream(start_sim: StartSim) -> None:
    url = await start_sim(FAST_SIM.model_copy(update={"decode_step_ms": 20.0}))
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        httpx.AsyncClient(base_url=url, timeout=10) as admin,
    ):
        faults = (await admin.get("/sim/faults")).json()
        assert faults["tokens_delivered"] == 0
        seen: list[str] = []
        armed_at: list[int] = []
        body = chat_body(max_tokens=500, stream=True)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await read_tokens(client, body, seen, arm=admin, armed_at=armed_at)
    assert armed_at[0] >= 5
    assert len(seen) == armed_at[0]  # every token up to the threshold arrived, none after


async def test_cli_serves_and_crash_exits_the_process(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("model: cli-model\ncrash_after_tokens: 3\n")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "simulator", "--port", "0", "--config", str(config)),
        *("--decode-step-ms", "1", "--prefill-base-ms", "1"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        ready = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        match = re.search(r"listening on (http://\S+)", ready)
        assert match, ready
        async with httpx.AsyncClient(base_url=match.group(1), timeout=10) as client:
            models = (await client.get("/v1/models")).json()
            assert models["data"][0]["id"] == "cli-model"
            body = chat_body(model="cli-model", max_tokens=10, stream=True)
            tokens: list[str] = []
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await read_tokens(client, body, tokens)
        assert len(tokens) == 3
        assert await asyncio.wait_for(process.wait(), 10) == 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
