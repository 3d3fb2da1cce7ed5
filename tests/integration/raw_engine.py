"""A raw HTTP/1.1 engine on 127.0.0.1 for the tests of the generation path's own client
(:mod:`gateway.upstream.http1`): it writes exactly the bytes a test names, and counts the
connections it accepted and those the client closed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from gateway.upstream.http1 import Http1Response, Http1Transport
from gateway.upstream.transport import StreamTimeouts

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answers request number ``n`` (from 1); returns whether to keep the connection."""

QUICK = StreamTimeouts(connect_s=2, first_byte_s=5, between_reads_s=5, total_s=10)
SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


def sized(body: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


class Engine:
    """A raw HTTP/1.1 server: reads each request (head and ``Content-Length`` body) and
    lets ``answer`` write the response; counts connections and the client's closes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.hung_up = 0
        """Connections the client closed (the server read its end)."""
        self.closed = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> Engine:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.hung_up += 1
                    return
                match = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                assert match is not None
                self.requests.append(head + await reader.readexactly(int(match[1])))
                if not await self.answer(reader, writer, len(self.requests)):
                    self.hung_up += reader.at_eof()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up += 1
        finally:
            writer.close()
            self.closed.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


def replies(*responses: bytes, keep: bool = True) -> Answer:
    """Answer request ``n`` with ``responses[n - 1]`` (the last one after those)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     n: int) -> bool:
        writer.write(responses[min(n, len(responses)) - 1])
        await writer.drain()
        return keep
    return answer


async def until_client_hangs_up(reader: asyncio.StreamReader) -> None:
    while await reader.read(1 << 16):
        pass


async def stream_all(response: Http1Response) -> bytes:
    try:
        return b"".join([data async for data in response.chunks()])
    finally:
        response.close()


async def post(http: Http1Transport, engine: Engine, timeouts: StreamTimeouts = QUICK, *,
               streamed: bool = True) -> Http1Response:
    return await http.post(engine.url + "/v1/chat/completions", b'{"stream": true}',
                           {"Content-Type": "application/json", "X-Request-Id": "r1"},
                           timeouts, streamed=streamed)
