"""LangChain's ``ChatOpenAI`` (``langchain-openai``, over the official SDK) streams
through the gateway to a simulator, usage included."""

from __future__ import annotations

import pytest

from tests.clients.conftest import MODEL, Through

langchain_openai = pytest.importorskip("langchain_openai")

pytestmark = pytest.mark.clients


async def test_chat_openai_streams_with_usage(through: Through) -> None:
    chat = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=through.base_url, api_key="unused", max_retries=0,
        max_completion_tokens=8, stream_usage=True, timeout=30)
    pieces, usage = [], None
    async for chunk in chat.astream("Say hello"):
        if chunk.content:
            pieces.append(chunk.content)
        if chunk.usage_metadata:
            usage = chunk.usage_metadata
    assert len(pieces) == 8
    assert usage is not None
    assert usage["output_tokens"] == 8
