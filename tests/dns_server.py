"""A small authoritative DNS server over UDP for tests: answers A, AAAA and SRV questions
from records a test changes while it runs (dnspython builds and parses the messages)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


@dataclass
class DnsServer:
    """``records[(name, type)]``: the rdata texts answered (``"10 0 8000 sim1.test."``
    for SRV); a name with none is NXDOMAIN. ``silent``: answer nothing (a timeout)."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    silent: bool = False
    queries: int = 0
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def answer(self, wire: bytes) -> bytes | None:
        self.queries += 1
        if self.silent:
            return None
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text()
        kind = dns.rdatatype.to_text(question.rdtype)
        texts = self.records.get((name, kind))
        if texts is None:
            if not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        response.answer.append(dns.rrset.from_text_list(question.name, 5, "IN", kind, texts))
        if kind == "SRV":  # glue: the targets' addresses, as Kubernetes sends them
            for text in texts:
                target = text.split()[-1]
                for glue_kind in ("A", "AAAA"):
                    glue = self.records.get((target, glue_kind))
                    if glue:
                        response.additional.append(dns.rrset.from_text_list(
                            dns.name.from_text(target), 5, "IN", glue_kind, glue))
        return response.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
