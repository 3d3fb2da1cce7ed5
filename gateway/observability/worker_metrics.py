"""One ``/metrics`` for several worker processes: each worker answers its own samples on
a Unix socket, and the worker that takes a scrape gathers the others' and merges them.

Nothing changes on the request path: every worker counts in its own in-process registry
as a single gateway does. prometheus-client's multiprocess mode writes every increment
to a shared memory-mapped file under a lock instead: 2 to 2.5 times the cost of each
increment and observation, on every request and every streamed read (measured in
docs/explanation/benchmarks.md). Here the cost is paid per scrape: one local connection
per other worker.

Merging, per family: counters and histograms are summed over workers (``_created``: the
earliest); gauges follow :data:`~gateway.observability.metrics.WORKER_GAUGE_MODES`
(``sum``, ``max``, ``min``, or ``worker``: one series per worker with a ``worker``
label). A worker that does not answer within :data:`PEER_TIMEOUT_S` is left out of that
scrape and logged; a worker that dies stops the whole server (see
:mod:`gateway.cli.workers`), so no stale series outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from gateway.observability.metrics import WORKER_GAUGE_MODES, GatewayMetrics

log = logging.getLogger("sluice.metrics")

PEER_TIMEOUT_S = 2.0
"""How long a scrape waits for another worker's samples."""
MAX_PEER_BYTES = 64 * 1024 * 1024
"""The most a worker's samples may weigh (the label values are bounded; this is a backstop)."""

Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]
"""A metric family as plain data: name, documentation, type, samples (name, labels, value)."""


def families(registry: CollectorRegistry) -> list[Family]:
    """The samples of ``registry`` as plain data (what a worker sends the others)."""
    return [(m.name, m.documentation, m.type, [(s.name, s.labels, s.value) for s in m.samples])
            for m in registry.collect()]


def merge(workers: Iterable[tuple[int, list[Family]]]) -> list[Metric]:
    """The families of several workers (index, families) as one set of metrics."""
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for index, found in workers:
        for name, documentation, kind, samples in found:
            if name not in merged:
                merged[name] = (Metric(name, documentation, kind), {})
            values = merged[name][1]
            mode = WORKER_GAUGE_MODES.get(name, "sum") if kind == "gauge" else "sum"
            created = name + "_created"
            for sample, labels, value in samples:
                if mode == "worker":
                    labels = {**labels, "worker": str(index)}
                key = (sample, tuple(labels.items()))
                old = values.get(key)
                if old is None:
                    values[key] = value
                elif sample == created or mode == "min":
                    values[key] = min(old, value)
                elif mode == "max":
                    values[key] = max(old, value)
                else:
                    values[key] = old + value
    out = []
    for metric, values in merged.values():
        metric.samples = [Sample(sample, dict(labels), value)
                          for (sample, labels), value in values.items()]
        out.append(metric)
    return out


class _Merged:
    """A collector over already merged metrics (for ``generate_latest``)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def render_merged(workers: Iterable[tuple[int, list[Family]]]) -> bytes:
    """The Prometheus text exposition of several workers' families, merged."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merge(workers)))
    return generate_latest(registry)


class WorkerPeers:
    """This worker's place among ``count`` workers sharing ``directory`` (worker ``i``
    listens on ``directory/i.sock``): answers the others, and gathers them for a scrape."""

    def __init__(self, metrics: GatewayMetrics, directory: Path, index: int,
                 count: int) -> None:
        self.metrics = metrics
        self.directory = directory
        self.index = index
        self.count = count
        self._server: asyncio.AbstractServer | None = None

    def _path(self, index: int) -> str:
        return str(self.directory / f"{index}.sock")

    async def start(self) -> None:
        """Listen for the other workers' requests for this worker's samples."""
        path = self._path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._answer, path=path)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(self.index))

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(orjson.dumps(families(self.metrics.registry)))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.warning("could not send this worker's metrics to another: %s", exc)
        finally:
            writer.close()

    async def _ask(self, index: int) -> list[Family] | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(self._path(index))
                chunks: list[bytes] = []
                size = 0
                while chunk := await reader.read(1 << 16):
                    size += len(chunk)
                    if size > MAX_PEER_BYTES:
                        raise ValueError(f"more than {MAX_PEER_BYTES} bytes")
                    chunks.append(chunk)
            data = b"".join(chunks)
            found: Any = orjson.loads(data)
            return [(n, d, t, [(s, labels, v) for s, labels, v in samples])
                    for n, d, t, samples in found]
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("worker %d's metrics left out of this scrape: %s", index,
                        exc or type(exc).__name__)
            return None
        finally:
            if writer is not None:
                writer.close()

    async def render(self) -> bytes:
        """Every worker's series, merged (this worker's own read last, so it is freshest)."""
        others = [i for i in range(self.count) if i != self.index]
        answers = await asyncio.gather(*(self._ask(i) for i in others))
        workers = [(i, found) for i, found in zip(others, answers, strict=True)
                   if found is not None]
        workers.append((self.index, families(self.metrics.registry)))
        workers.sort(key=lambda pair: pair[0])
        return render_merged(workers)
