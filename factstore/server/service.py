"""What the HTTP layer holds between requests: the store, per-model tokenizers for checking
submissions, warm heads for `ask`, and (on the embedded default) one in-process worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING, TypeVar

from factstore import api, config
from factstore.domain import ApiTokenInfo, BaseModel, Release
from factstore.errors import FactStoreError
from factstore.results import Answer, Comparison
from factstore.server.limits import AskGate, LruCache

if TYPE_CHECKING:
    from factstore.api import EditSession, ModelChecks  # the types only

T = TypeVar("T")

log = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"


@dataclass
class ServerSettings:
    database_url: str | None = None  # default: FACTSTORE_DATABASE_URL, else the embedded SQLite file
    require_token: bool = False  # reads need a read token from loopback clients too
    public_reads: bool = False  # reads are open to every client, not just loopback ones
    worker: bool | None = None  # run a worker in-process; None: only on SQLite
    worker_models: list[str] = field(default_factory=list)
    device: str | None = None
    max_body_bytes: int = 64 * 1024
    body_seconds: float = 30.0  # a request body must be whole within this (app.BodyLimit)
    allowed_hosts: list[str] | None = (
        None  # Host headers accepted; None: any (serve on loopback sets the loopback names)
    )


class Service:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.store = api.open_store(settings.database_url)
        self._checks: dict[str, ModelChecks] = {}
        limits = config.settings()
        self.ask_threads = limits.ask_threads
        self.ask_gate = AskGate(limits.ask_threads + limits.ask_queue, limits.ask_per_minute, limits.ask_threads)
        self._heads: LruCache[EditSession] = LruCache(limits.ask_heads)
        self._head_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # the in-process worker ----------------------------------------------------------------

    @property
    def runs_worker(self) -> bool:
        wanted = self.settings.worker
        return self.store.dialect == "sqlite" if wanted is None else wanted

    def start(self) -> None:
        if self.runs_worker and self._worker is None:
            self._worker = threading.Thread(target=self._work, name="factstore worker", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        worker_store = api.open_store(self.settings.database_url)  # its own connection pool
        try:
            settings = api.WorkerSettings(models=list(self.settings.worker_models), device=self.settings.device)
            api.run_worker(worker_store, settings, stop=self._stop)
        except Exception:
            log.exception("the in-process worker stopped")
        finally:
            worker_store.close()

    def stop(self) -> None:
        """Finish the edit being computed, then stop."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
        self.store.close()

    # who may do what ----------------------------------------------------------------------

    def reader(self, token: str | None, client_host: str | None) -> ApiTokenInfo | None:
        """Reads are open to loopback clients (and to all with public_reads) unless require_token."""
        if not self.settings.require_token and (self.settings.public_reads or _is_loopback(client_host)):
            return api.authenticate(self.store, token, "read") if token else None
        return api.authenticate(self.store, token, "read")

    def writer(self, token: str | None, scope: str = "write") -> ApiTokenInfo:
        return api.authenticate(self.store, token, scope)

    # models -------------------------------------------------------------------------------

    def checks(self, alias: str) -> ModelChecks:
        """A model's tokenizer and shape, loaded once per server (the alias is never re-pointed)."""
        with self._lock:
            found = self._checks.get(alias)
        if found is None:
            found = api.model_checks(self.store, alias)
            with self._lock:
                self._checks[alias] = found
        return found

    def ask(self, alias: str, prompt: str, top: int) -> Answer:
        """Top tokens and continuation on the head model, kept warm and synced with the log."""
        return self._on_head(alias, lambda head: api.ask_head(head, prompt, top))

    def compare(self, alias: str, prompt: str, answers: Sequence[str] = ()) -> Comparison:
        """PROMPT on the head and the base model side by side (api.compare_head)."""
        return self._on_head(alias, lambda head: api.compare_head(head, prompt, answers))

    def _on_head(self, alias: str, use: Callable[[EditSession], T]) -> T:
        self.checks(alias)  # an unknown model is refused before any weights are loaded
        with self._lock:
            lock = self._head_locks.setdefault(alias, threading.Lock())
        with lock:  # one request at a time rebuilds or reads a head
            with self._lock:
                head = self._heads.get(alias)
            if head is None:
                head = api.open_head(self.store, alias, device=self.settings.device)
                with self._lock:
                    self._heads.put(alias, head)  # past ask_heads, the least recently asked is let go
            return use(head)

    def warm_heads(self) -> list[str]:
        """Aliases whose head is loaded, least recently asked first."""
        with self._lock:
            return self._heads.keys()

    def model_json(self, model: BaseModel) -> dict:
        return {**model.__dict__, "source": api.shown_source(model), "edits": self.store.count_entries(model.id)}

    def release_json(self, release: Release) -> dict:
        return {
            "version": release.version,
            "mode": release.mode,
            "status": release.status,
            "edits": len(release.edit_ids),
            "edit_ids": list(release.edit_ids),
            "edit_log_sha256": release.edit_log_sha256,
            "manifest_sha256": release.manifest_sha256,
            "hub_repo": release.hub_repo,
            "hub_commit": release.hub_commit,
            "tag": release.tag,
            "hub_url": f"{HUB_URL}/{release.hub_repo}/tree/{release.tag or release.hub_commit}"
            if release.hub_repo
            else None,
            "scores": api.release_scores(release),
            "created_at": release.created_at,
        }

    # health -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict]:
        try:
            state = api.service_state(self.store)
        except FactStoreError as exc:  # its message names the database: the log only
            log.warning("readiness: %s", " ".join(str(exc).split()))
            return False, {"status": "unavailable", "detail": "database unreachable"}
        except Exception as exc:  # the driver's own error when the server is down
            return False, {"status": "unavailable", "detail": f"database unreachable ({type(exc).__name__})"}
        current, head, workers = state["schema_current"], state["schema_head"], len(state["workers"])
        ready = current == head and workers > 0
        detail = (
            None
            if ready
            else ("schema is not at head: run `factstore db upgrade`" if current != head else "no live worker")
        )
        return ready, {
            "status": "ready" if ready else "not ready",
            "database": "reachable",
            "schema_current": current,
            "schema_head": head,
            "workers": workers,
            "detail": detail,
        }


def _is_loopback(host: str | None) -> bool:
    """Whether the peer address is loopback. Behind a proxy on the same host every client looks
    like loopback: serve with --require-token there."""
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False
