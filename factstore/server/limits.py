"""Bounds on `ask`, the one read that runs a model: a client's rate, the asks let in at once, and
the warm heads kept. Plain Python (no FastAPI), so the rules are tested on their own."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from factstore.errors import ServiceBusy, TooManyRequests

WINDOW_SECONDS = 60.0
MAX_CLIENTS = 10_000  # clients with a live rate window; past it new clients get 503 until windows expire

T = TypeVar("T")


class AskGate:
    """Admits an ask or refuses it at once: 429 past PER_MINUTE asks of one client in the current
    minute (fixed windows) or past PER_CLIENT of its asks admitted at once, 503 when SLOTS asks
    are already admitted (running or waiting for a thread), or when MAX_CLIENTS clients have
    live windows. Refused asks hold no thread and load nothing. A client is what the caller
    names it (a token, else an address): behind a proxy, every anonymous client is the proxy."""

    def __init__(
        self, slots: int, per_minute: int, per_client: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.slots, self.per_minute, self.per_client, self.clock = slots, per_minute, per_client, clock
        self.admitted = 0
        self._running: dict[str, int] = {}  # client -> its asks admitted now
        self._windows: OrderedDict[str, tuple[float, int]] = (
            OrderedDict()
        )  # client -> (window start, asks); oldest use first
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            self._forget_expired(now)
            start, count = self._windows.pop(client, (now, 0))
            if now - start >= WINDOW_SECONDS:
                start, count = now, 0
            self._windows[client] = (start, count)  # last: the most recently seen
            if count >= self.per_minute:
                wait = max(1, math.ceil(start + WINDOW_SECONDS - now))
                raise TooManyRequests(f"more than {self.per_minute} asks a minute from this client", retry_after=wait)
            if self._running.get(client, 0) >= self.per_client:
                raise TooManyRequests(f"{self.per_client} asks of this client are already running", retry_after=2)
            if self.admitted >= self.slots or len(self._windows) > MAX_CLIENTS:
                if count == 0 and len(self._windows) > MAX_CLIENTS:
                    del self._windows[client]  # a new client past the table's size is not remembered
                raise ServiceBusy(f"{self.slots} asks are already running or waiting; retry shortly", retry_after=2)
            self._windows[client] = (start, count + 1)
            self._running[client] = self._running.get(client, 0) + 1
            self.admitted += 1

    def release(self, client: str) -> None:
        with self._lock:
            self.admitted -= 1
            left = self._running.pop(client, 1) - 1
            if left:
                self._running[client] = left

    def _forget_expired(self, now: float) -> None:
        """Drop windows whose minute is over, oldest use first (a live window is never dropped,
        so rotating addresses cannot wipe a throttled client's count)."""
        while len(self._windows) > MAX_CLIENTS // 2:
            client, (start, _count) = next(iter(self._windows.items()))
            if now - start < WINDOW_SECONDS:
                break
            del self._windows[client]


class LruCache(Generic[T]):
    """At most SIZE values; a get makes its key the newest, a put past SIZE drops the oldest (a
    head still in use by a running ask lives on until that ask ends)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: str, value: T) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def keys(self) -> list[str]:
        return list(self._items)
