"""The FastAPI application: JSON API, HTML pages, health probes, body-size cap, error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factstore import api
from factstore.server import errors
from factstore.server.routes import health, router
from factstore.server.service import ServerSettings, Service
from factstore.server.web import pages


class BodyLimit:
    """Refuse request bodies over a byte cap with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await errors.body("payload too large", f"request bodies are limited to {self.max_bytes} bytes", 413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise errors.BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


def create_app(settings: ServerSettings | None = None, service: Service | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc: Service = app.state.service
        api.load_heavy_modules()  # before the worker thread and the request threads import them at once
        svc.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(
        title="factstore", version="1", lifespan=lifespan,
        description="Register fact corrections (ROME edits) for language models, watch workers compute them, compile releases.",
    )
    app.state.service = service or Service(settings)
    errors.install(app)
    app.include_router(router)
    app.include_router(health)
    app.include_router(pages)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def serve(
    host: str = "127.0.0.1", port: int = 8000, *, require_token: bool = False, public_reads: bool = False,
    worker: bool | None = None, worker_models: list[str] | None = None, device: str | None = None, **uvicorn_options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both; the in-process worker finishes its edit).
    On SQLite (or with worker=True) one worker computes edits in this process."""
    import uvicorn

    settings = ServerSettings(require_token=require_token, public_reads=public_reads, worker=worker,
                              worker_models=list(worker_models or []), device=device)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", **uvicorn_options)
