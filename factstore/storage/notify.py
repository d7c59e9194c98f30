"""Wake-ups for idle workers on PostgreSQL: a submission or a new job NOTIFYs one channel, which
idle workers LISTEN on, so they take the work at once instead of at their next look at the
queue. Polling stays the fallback (a lost connection, SQLite, a notification missed)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "factstore_queue"
SLICE = 1.0  # seconds between looks at the stop event while listening


def notify(s: Session) -> None:
    """Inside a writing transaction: wake the listeners when it commits (PostgreSQL only)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class Listener:
    """A connection of its own that LISTENs on CHANNEL (opened on first use, again after a loss)."""

    def __init__(self, engine: Engine) -> None:
        self.url = engine.url.set(drivername="postgresql")  # rendered with its password only to connect
        self._conn: Any = None
        self.off = False  # a failure other than the database's own: poll from then on

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Block until a notification (every pending one is consumed), SECONDS, or STOP (looked
        at every SLICE seconds). False, at once, when the connection cannot be had: the caller
        sleeps instead."""
        import psycopg

        if self.off:
            return False
        deadline = time.monotonic() + seconds
        try:
            if self._conn is None:
                conninfo = self.url.render_as_string(hide_password=False)
                self._conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
                self._conn.execute(f"LISTEN {CHANNEL}")
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in self._conn.notifies(timeout=min(left, SLICE), stop_after=1)):
                    for _ in self._conn.notifies(timeout=0):  # several submissions at once: one turn takes them all
                        pass
                    break
            return True
        except psycopg.Error as exc:  # the database away or refusing: try again at the next idle turn
            log.warning("queue notifications unavailable (%s); polling", type(exc).__name__)
            self.close()
            return False
        except Exception as exc:  # e.g. a psycopg without notifies(timeout=): never the worker's end
            log.warning("queue notifications off (%s: %s); polling", type(exc).__name__, exc)
            self.off = True
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
