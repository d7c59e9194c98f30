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
MAX_CLIENTS = 10_000  # rate windows remembered; past it, the oldest are forgotten

T = TypeVar("T")


class AskGate:
    """Admits an ask or refuses it at once: 429 past PER_MINUTE asks of one client in the current
    minute (fixed windows), 503 when SLOTS asks are already admitted (running or waiting for a
    thread). Refused asks hold no thread and load nothing."""

    def __init__(self, slots: int, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots, self.per_minute, self.clock = slots, per_minute, clock
        self.admitted = 0
        self._windows: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (window start, asks)
        self._lock = threading.Lock()

    def admit(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            start, count = self._windows.pop(client, (now, 0))
            if now - start >= WINDOW_SECONDS:
                start, count = now, 0
            if count >= self.per_minute:
                self._remember(client, start, count)
                wait = max(1, math.ceil(start + WINDOW_SECONDS - now))
                raise TooManyRequests(f"more than {self.per_minute} asks a minute from this client", retry_after=wait)
            if self.admitted >= self.slots:
                self._remember(client, start, count)
                raise ServiceBusy(f"{self.slots} asks are already running or waiting; retry shortly", retry_after=2)
            self._remember(client, start, count + 1)
            self.admitted += 1

    def release(self) -> None:
        with self._lock:
            self.admitted -= 1

    def _remember(self, client: str, start: float, count: int) -> None:
        self._windows[client] = (start, count)  # re-inserted last: the dict runs oldest first
        while len(self._windows) > MAX_CLIENTS:
            self._windows.popitem(last=False)


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
