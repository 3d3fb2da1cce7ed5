"""The application factory: ``create_app(settings)`` builds a self-contained gateway.

Resources (managed engines, the upstream connection pool, the engine pool and its
health checks) are opened in the lifespan and handed to services explicitly; the
lifespan's state is what handlers see as ``request.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from engines.client import create_session
from engines.supervisor import EngineProcess
from gateway.handlers import EXCEPTION_HANDLERS
from gateway.metrics import GatewayMetrics
from gateway.middleware import AuthMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from gateway.routes import health, openai
from gateway.services.completions import CompletionService
from gateway.services.engine_pool import EnginePool
from gateway.settings import Settings


def create_app(settings: Settings) -> Starlette:
    """A gateway app for ``settings``. Nothing starts until its lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        metrics = GatewayMetrics()
        engines = settings.resolved_engines()
        async with AsyncExitStack() as stack:
            for config in engines:
                if config.managed is not None:
                    process = EngineProcess(config.name, config.managed,
                                            settings.log_dir / f"engine-{config.name}.log")
                    await process.start()
                    stack.push_async_callback(process.stop)
            session = create_session(settings.pool, settings.timeouts)
            stack.push_async_callback(session.close)
            pool = EnginePool(engines, session, settings.timeouts, metrics,
                              settings.health_interval_s)
            await pool.refresh()
            checks = asyncio.create_task(pool.run_health_checks(), name="health-checks")
            stack.push_async_callback(_cancel, checks)
            yield {
                "settings": settings,
                "metrics": metrics,
                "pool": pool,
                "completions": CompletionService(pool, metrics, retries=settings.retries),
            }

    return Starlette(
        routes=[*openai.routes, *health.routes],
        middleware=[
            Middleware(RequestContextMiddleware, log_requests=settings.access_log),
            Middleware(AuthMiddleware, api_keys=settings.api_keys),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
