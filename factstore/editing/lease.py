"""A process's identity towards the edit queue, and the heartbeat that keeps its leases."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from factstore import config
from factstore.domain import EditEntry
from factstore.errors import EditFailed, EditStateError, FactStoreError, HeadChanged
from factstore.storage.models import QUEUED_STATUSES
from factstore.storage.store import Store

T = TypeVar("T")

log = logging.getLogger(__name__)


class Holder:
    """Holds model leases for one process (a worker, or a CLI command computing in-process).

    A daemon thread renews every lease it holds each third of the lease time; if the process is
    killed the leases expire and another process takes the models over."""

    def __init__(self, store: Store, role: str, seconds: float | None = None) -> None:
        self.store = store
        self.id = f"{role}:{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.seconds = float(seconds or config.lease_seconds())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.store.renew_leases(self.id, self.seconds)
            except (
                Exception
            ) as exc:  # the database is away (or its driver failed): the leases may lapse; completing then fails safely
                log.warning("heartbeat failed: %s", exc if isinstance(exc, FactStoreError) else type(exc).__name__)

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.id}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextmanager
    def model(self, base_id: int) -> Iterator[bool]:
        """Try to hold one model for the block (yields whether it is held); given up after it."""
        held = self.store.acquire_lease(base_id, self.id, self.seconds)
        if not held:
            yield False
            return
        self.start()
        try:
            yield True
        finally:
            self.stop()
            self.store.release_lease(base_id, self.id)


def compute_or_wait(
    store: Store, base_id: int, edit_id: int, compute: Callable[[EditEntry, str], T], poll: float = 0.2
) -> T | EditEntry:
    """Compute submitted request EDIT_ID here (COMPUTE(entry, holder id)) while this process can
    hold its model's lease; while a worker holds it, wait for the worker to end the request.
    Returns what COMPUTE returned, or the request's entry once another process made it active.
    HeadChanged from COMPUTE (the log changed meanwhile) computes it again on the new head."""
    holder = Holder(store, "cli")
    while True:
        with holder.model(base_id) as held:
            claimed = store.claim_requests(base_id, holder.id, 1, only=edit_id) if held else []
            if claimed:
                try:
                    return compute(claimed[0], holder.id)
                except HeadChanged:
                    continue
        entry = store.get_entry(edit_id)
        if entry.status == "failed":
            raise EditFailed(f"edit {edit_id} failed: {entry.error}")
        if entry.status == "active":
            return entry
        if entry.status not in QUEUED_STATUSES:
            raise EditStateError(f"edit {edit_id} is {entry.status}")
        time.sleep(poll)
