"""What every group of store verbs shares: the engine, one-transaction scopes, error wording."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from factstore import config
from factstore.errors import DatabaseError, DatabaseUnavailable
from factstore.storage import schema
from factstore.storage.engine import check_reachable, make_engine, readonly, session_scope


def first_line(exc: DBAPIError) -> str:
    return (
        str(exc.orig).strip().splitlines()[0] if exc.orig is not None and str(exc.orig).strip() else type(exc).__name__
    )


def refused(exc: IntegrityError, what: str) -> DatabaseError:
    return DatabaseError(f"the database refused to {what} ({first_line(exc)}); nothing was written")


_WRITERS: dict[str, threading.RLock] = {}  # SQLite file URL -> the lock its writers in this process queue on
_WRITERS_LOCK = threading.Lock()


def _writer_lock(url: str) -> threading.RLock:
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(url, threading.RLock())


class StoreBase:
    """The fact store on one database URL (FACTSTORE_DATABASE_URL or the embedded SQLite file)."""

    def __init__(self, url: str | None = None, migrate: bool = True) -> None:
        self.url = url or config.database_url()
        self.engine = make_engine(self.url)
        check_reachable(self.engine)
        if migrate:
            try:
                schema.ensure_current(self.engine, self.url)
            except OperationalError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                shown = self.engine.url.render_as_string(hide_password=True)
                raise DatabaseUnavailable(
                    f"cannot read the schema of {shown} ({reason}); check FACTSTORE_DATABASE_URL"
                ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(readonly(self.engine), expire_on_commit=False)
        # SQLite takes one writer at a time; threads of one process (the server's) queue here in
        # order instead of in SQLite's busy handler, which sleeps in growing steps (p99 781 ms -> see docs/benchmarks.md)
        self._writer: AbstractContextManager[object] = (
            _writer_lock(self.url) if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Session]:
        """One transaction (write=False: one that only reads, and never waits for a writer on SQLite).
        Database failures become one-line errors with the password masked."""
        shown = self.engine.url.render_as_string(hide_password=True)
        try:
            with (
                self._writer if write else nullcontext(),
                session_scope(self._sessions if write else self._read_sessions) as session,
            ):
                yield session
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"the database {shown} failed ({first_line(exc)}); check that it is running and writable, then retry"
            ) from None
        except DataError as exc:
            raise DatabaseError(
                f"the database {shown} refused a value ({first_line(exc)}); nothing was written"
            ) from None

    def close(self) -> None:
        self.engine.dispose()
