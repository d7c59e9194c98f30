"""Deadlines for slow clients, below the ASGI app.

uvicorn counts every open connection against `limit_concurrency` and starts no timer until a
response has been sent, so connections that never finish their request headers would hold the
server's slots forever and every other client would get 503 (slowloris). This protocol closes a
connection whose next request's headers are not complete HEADER_SECONDS after it opened or
after its last response. (A body that trickles is bounded in the app: app.BodyLimit.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0


def header_deadline(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline of SECONDS for each request's headers."""
    return type("HeaderDeadlineProtocol", (HeaderDeadline,), {"header_seconds": seconds})


class HeaderDeadline(H11Protocol):
    header_seconds: float = HEADER_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_seconds, self._expire, self.cycle)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, armed_with: object) -> None:
        """Close the connection if no request began since the deadline was armed (a request
        that did is under way, or finished and armed a new one)."""
        self._deadline = None
        if self.cycle is not armed_with or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()
