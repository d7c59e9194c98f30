"""The FastAPI application: JSON API, HTML pages, health probes, body-size cap, error bodies."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factstore import api
from factstore.errors import InvalidArgument
from factstore.server import errors
from factstore.server.deadlines import HEADER_SECONDS, header_deadline
from factstore.server.routes import health, router
from factstore.server.service import ServerSettings, Service
from factstore.server.web import pages


class BodyLimit:
    """Refuse request bodies over a byte cap with 413: by Content-Length at once, and a chunked
    body by counting it while it is read (bodies are small, so it is read here before the app);
    a body not whole within SECONDS is a 408, so a client that trickles it cannot hold a
    connection and a task for long."""

    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float) -> None:
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

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
        with anyio.move_on_after(self.seconds) as deadline:
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
        if deadline.cancelled_caught:
            detail = f"the request body did not arrive within {self.seconds:g} s"
            await errors.body("request timeout", detail, 408, {"Connection": "close"})(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await errors.body("payload too large", f"request bodies are limited to {self.max_bytes} bytes", 413)(
            scope, receive, send
        )


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(bind: str, extra: list[str] | None = None) -> list[str]:
    """The Host names a server bound to BIND answers: the bind address itself (not 0.0.0.0 or
    ::, which no client names), the loopback names, and the operator's real names (EXTRA). Any
    other Host is a page on another site reaching us through DNS rebinding."""
    names = [] if bind in ("0.0.0.0", "::", "") else [bind.strip("[]").lower()]
    return list(dict.fromkeys([*names, *LOOPBACK_NAMES, *(n.lower() for n in extra or [])]))


HEALTH_PATHS = frozenset({"/healthz", "/readyz"})  # no data; probes name the machine by its address


class HostCheck:
    """Refuse a request whose Host header is not one of ALLOWED (400, problem details); the
    health probes answer any Host."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app, self.allowed = app, frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = scope["type"] in ("http", "websocket") and scope["path"] not in HEALTH_PATHS
        if checked and _host_name(scope) not in self.allowed:
            refusal = errors.body(
                "host not allowed", "this server answers only the names it serves; see serve --allowed-host", 400
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class FrameDenied:
    """Every response says it may not be framed (pages carry token forms: no clickjacking)."""

    HEADERS = ((b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, framed if scope["type"] == "http" else send)


def _host_name(scope: Scope) -> str | None:
    """The host part of the Host header, lower-case, IPv6 without brackets (None: missing or malformed)."""
    raw = dict(scope.get("headers") or []).get(b"host")
    if raw is None:
        return None
    try:
        return urlsplit("//" + raw.decode("ascii")).hostname
    except (UnicodeDecodeError, ValueError):
        return None


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
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, seconds=settings.body_seconds)
    app.add_middleware(FrameDenied)
    if settings.allowed_hosts is not None:  # a page on another site cannot reach us through DNS rebinding
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    return app


SETTINGS_VARIABLE = "FACTSTORE_SERVE_SETTINGS"  # how `serve --processes N` hands its settings to each process


def app_from_environment() -> FastAPI:
    """The app of one of `serve --processes N`'s processes: the settings the parent put in the
    environment (uvicorn starts each process afresh and builds the app by this factory)."""
    raw = json.loads(os.environ[SETTINGS_VARIABLE])
    return create_app(ServerSettings(**raw))


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServerSettings | None = None,
    *,
    max_connections: int = 200,
    header_seconds: float = HEADER_SECONDS,
    processes: int = 1,
    **uvicorn_options: Any,
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both; the in-process worker finishes its edit).
    On SQLite (or with settings.worker=True) one worker computes edits in this process.
    settings.allowed_hosts: the names clients reach it by beyond the bind address and the
    loopback names (allowed_hosts). Past MAX_CONNECTIONS connections and requests at once
    uvicorn answers 503 at once; an idle keep-alive connection is closed after 5 s, a connection
    whose request headers are not whole HEADER_SECONDS after it opened (or after its last
    response) is closed, a request's headers may not pass 16 KiB (h11's bound) and its body must
    arrive within settings.body_seconds: slow clients cannot hold the server's connections for
    long. PROCESSES > 1: that many processes share the socket, each with its own connections,
    `ask` threads, rate limits and loaded heads (everything else is in the database) and no
    worker (run `factstore worker` beside them)."""
    import uvicorn

    settings = settings or ServerSettings()
    served = replace(settings, allowed_hosts=allowed_hosts(host, settings.allowed_hosts))
    options = {"limit_concurrency": max_connections, "timeout_keep_alive": 5, "log_level": "info", **uvicorn_options}
    if processes == 1:
        uvicorn.run(create_app(served), host=host, port=port, http=header_deadline(header_seconds), **options)
        return
    if served.worker:
        raise InvalidArgument("serve --processes runs no worker in its processes; run `factstore worker` beside it")
    if header_seconds != HEADER_SECONDS:
        raise InvalidArgument("serve --processes keeps the default header deadline")
    os.environ[SETTINGS_VARIABLE] = json.dumps(asdict(replace(served, worker=False)))
    uvicorn.run(
        f"{__name__}:app_from_environment",
        factory=True,
        workers=processes,
        host=host,
        port=port,
        http="factstore.server.deadlines:HeaderDeadline",  # by name: each process imports it
        **options,
    )
