"""The FastAPI application: JSON API, HTML pages, health probes, body-size cap, error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factstore import api
from factstore.server import errors
from factstore.server.routes import health, router
from factstore.server.service import ServerSettings, Service
from factstore.server.web import pages


class BodyLimit:
    """Refuse request bodies over a byte cap with 413: by Content-Length at once, and a chunked
    body by counting it while it is read (bodies are small, so it is read here before the app)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size, more = 0, True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = bool(message.get("more_body"))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await errors.body("payload too large", f"request bodies are limited to {self.max_bytes} bytes", 413)(
            scope, receive, send
        )


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
        title="factstore",
        version="1",
        lifespan=lifespan,
        description="Register fact corrections (ROME edits) for language models, watch workers compute them, compile releases.",
    )
    app.state.service = service or Service(settings)
    errors.install(app)
    app.include_router(router)
    app.include_router(health)
    app.include_router(pages)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.allowed_hosts:  # a browser page on another site cannot reach a loopback server through DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    require_token: bool = False,
    public_reads: bool = False,
    worker: bool | None = None,
    worker_models: list[str] | None = None,
    device: str | None = None,
    **uvicorn_options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both; the in-process worker finishes its edit).
    On SQLite (or with worker=True) one worker computes edits in this process."""
    import uvicorn

    loopback = host in ("127.0.0.1", "localhost")
    settings = ServerSettings(
        require_token=require_token,
        public_reads=public_reads,
        worker=worker,
        worker_models=list(worker_models or []),
        device=device,
        allowed_hosts=["127.0.0.1", "localhost"] if loopback else None,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", **uvicorn_options)
