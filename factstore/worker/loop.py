"""The worker loop: take a model's lease, claim its pending requests, compute them on the warm
head, one short transaction per result; then jobs. Several workers share one database: each
model is computed on by one of them at a time, different models in parallel."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch

from factstore.domain import EditEntry
from factstore.editing.lease import Holder
from factstore.editing.session import EditSession
from factstore.errors import DatabaseUnavailable, FactStoreError, HeadChanged, InvalidArgument, LeaseLost
from factstore.options import WorkerSettings
from factstore.progress import SILENT, Reporter
from factstore.storage.notify import Listener
from factstore.storage.store import Store
from factstore.weights import checkpoints
from factstore.worker import jobs

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    computed: int = 0
    failed: int = 0
    dropped: int = 0  # results dropped because another worker took the model over
    recomputed: int = 0  # results sent back to the queue because the log changed while computing
    jobs: int = 0
    rebuilds: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Outcome(Enum):
    """What became of one claimed request in a worker's turn; the value names its counter."""

    COMPUTED = "computed"
    FAILED = "failed"  # stored on the request with its reason
    DROPPED = "dropped"  # another worker took the model over: its result is not written
    REQUEUED = "recomputed"  # the log changed while computing: back in the queue
    FATAL = "fatal"  # the database is away: the turn stops, the lease expires


# first match wins: an exception raised while computing a request -> its outcome
OUTCOMES: tuple[tuple[type[BaseException], Outcome], ...] = (
    (HeadChanged, Outcome.REQUEUED),
    (LeaseLost, Outcome.DROPPED),
    (DatabaseUnavailable, Outcome.FATAL),
    (Exception, Outcome.FAILED),
)


def outcome_of(exc: BaseException) -> Outcome:
    return next((outcome for kind, outcome in OUTCOMES if isinstance(exc, kind)), Outcome.FATAL)


@dataclass
class _Hold:
    keep: bool = False  # keep the model's lease after this turn


class Worker:
    def __init__(self, store: Store, settings: WorkerSettings | None = None, progress: Reporter = SILENT) -> None:
        self.store = store
        self.settings = settings or WorkerSettings()
        self.progress = progress
        self.holder = Holder(store, "worker", self.settings.lease_seconds)
        self.stopping = threading.Event()  # set by SIGTERM: finish the current edit, then exit
        self.stats = WorkerStats()
        self._sessions: dict[int, EditSession] = {}  # warm heads by base model id, least recently used first
        self._held: set[int] = set()  # models whose lease this worker keeps between turns
        self._streak: dict[int, int] = {}  # batches in a row on each held model
        self._listener = Listener(store.engine) if self.settings.listen and store.dialect == "postgresql" else None
        for alias in self.settings.models:
            store.get_base_model(alias)  # an unknown alias is refused at start
        if self.settings.device:
            checkpoints.check_device(self.settings.device)  # as is an unknown device
        if not (self.settings.edits or self.settings.jobs):
            raise InvalidArgument("a worker that computes no edits and runs no jobs would do nothing")
        self.kinds = jobs.runnable_kinds() if self.settings.jobs else ()  # job kinds it takes

    @property
    def id(self) -> str:
        return self.holder.id

    def _served(self) -> dict[int, str]:
        """Base model id -> alias of the models this worker computes."""
        wanted = set(self.settings.models)
        return {m.id: m.alias for m in self.store.list_base_models() if not wanted or m.alias in wanted}

    def run(self, max_idle_turns: int | None = None) -> WorkerStats:
        """Work until stopped (or, with max_idle_turns, until the queue stayed empty that many turns)."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        self.store.register_worker(self.id, self.settings.models, self.kinds)
        self.holder.start()
        idle = 0
        try:
            while not self.stopping.is_set():
                try:
                    busy = self.turn()
                except FactStoreError as exc:  # the database went away: wait and retry
                    log.warning("worker turn failed: %s", exc)
                    busy = False
                idle = 0 if busy else idle + 1
                if max_idle_turns is not None and idle >= max_idle_turns:
                    break
                if not busy:
                    self._idle(self.settings.poll)
        finally:
            if self._listener is not None:
                self._listener.close()
            self.holder.stop()
            try:
                self.store.stop_worker(self.id)
            except FactStoreError as exc:  # leases expire by themselves
                log.warning("could not record the worker's exit: %s", exc)
        return self.stats

    def _idle(self, seconds: float) -> None:
        """Wait for work: on PostgreSQL until a submission's notification or SECONDS; else (or
        when notifications cannot be had) SECONDS, cut short by a stop."""
        if self._listener is None or not self._listener.wait(seconds, self.stopping):
            self.stopping.wait(seconds)

    def turn(self) -> bool:
        """One batch on a model, then one job. Returns whether it did work.

        A worker stays on the model it holds while that model has requests (its head is warm
        there) and takes one new model at a time, so several workers spread over the models;
        it gives a model up as soon as its queue is empty."""
        served = self._served()
        queued = [b for b in self.store.list_queued_models() if b in served] if self.settings.edits else []
        for base_id in sorted(self._held - set(queued)):
            self._release(base_id)
        long = [b for b in self._held if self._streak.get(b, 0) >= self.settings.fair_batches]
        waiting = (
            [b for b in self.store.list_waiting_models(self.id) if b in served and b not in self._held] if long else []
        )
        spent = set(long) if waiting else set()
        for base_id in sorted(spent):  # its turn is over: another model waits (here or for another worker)
            self._release(base_id)
        busy = False
        held = [b for b in queued if b in self._held]
        for base_id in held or sorted(queued, key=lambda b: b in spent):
            if self.stopping.is_set():
                break
            if self._model_turn(base_id, served[base_id]):
                busy = True
                if not held:
                    break  # one newly taken model per turn: leave the others to other workers
        if self.settings.jobs and not self.stopping.is_set():
            job = self.store.claim_job(self.id, list(served), stale_after=3 * self.holder.seconds, kinds=self.kinds)
            if job is not None:
                for base_id in sorted(self._held):  # other workers compute edits while this one runs the job
                    self._release(base_id)
                jobs.run(self.store, job, self.id, self.settings.device, self.progress, self.stopping)
                self.stats.jobs += 1
                busy = True
        return busy

    def _release(self, base_id: int) -> None:
        self._held.discard(base_id)
        self._streak.pop(base_id, None)
        self.store.release_lease(base_id, self.id)

    @contextmanager
    def _holding(self, base_id: int) -> Iterator[_Hold]:
        """The model's lease for one turn: kept on exit when the turn says so, else given up
        (a failure, a stop, an empty queue)."""
        hold = _Hold()
        try:
            yield hold
        finally:
            if not hold.keep:
                try:
                    self._release(base_id)
                except FactStoreError as exc:  # the database is away: the lease expires by itself
                    log.warning("could not release model %s: %s", base_id, exc)

    def _model_turn(self, base_id: int, alias: str) -> bool:
        """One batch of a model's queue. The lease is kept after a full batch (the model likely
        has more, and its head is warm here); given up on a failure or when the worker stops."""
        if not self.store.acquire_lease(base_id, self.id, self.holder.seconds):
            self._held.discard(base_id)
            return False  # another worker computes this model now
        self._held.add(base_id)
        with self._holding(base_id) as hold:
            claimed = self.store.claim_requests(base_id, self.id, self.settings.batch)
            if not claimed:
                return False
            session = self._loaded(base_id, alias, claimed)
            if session is None:
                return True
            try:
                done, claimed = session.process_many(claimed, self.id)  # one optimisation for what can share it
            except LeaseLost:
                self._count(Outcome.DROPPED, base_id, len(claimed))
                return True
            self._count(Outcome.COMPUTED, base_id, len(done))
            for entry in claimed:
                if self.stopping.is_set():
                    return True  # the rest go back to pending when the lease is released
                if self._count(self._compute(session, entry), base_id) is Outcome.DROPPED:
                    return True
            hold.keep = not self.stopping.is_set()
            self._streak[base_id] = self._streak.get(base_id, 0) + 1
            return True

    def _loaded(self, base_id: int, alias: str, claimed: list[EditEntry]) -> EditSession | None:
        """The model's warm head, or None when it cannot be loaded: every claimed request then
        fails with the reason."""
        try:
            return self._session(base_id, alias)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, FactStoreError) else f"{type(exc).__name__}: {exc}"
            for entry in claimed:
                self.store.fail_request(entry.id, self.id, f"the model could not be loaded: {reason}")
            self.stats.failed += len(claimed)
            return None

    def _compute(self, session: EditSession, entry: EditEntry) -> Outcome:
        """One request on the head; what became of it (a fatal one raises)."""
        try:
            session.process(entry, self.id)
            return Outcome.COMPUTED
        except Exception as exc:
            outcome = outcome_of(exc)
            if outcome is Outcome.FATAL:
                raise  # the claimed requests stay computing until the lease is taken again, then go back to pending
            if outcome is Outcome.FAILED:  # stored on the request as its one-line reason
                log.info("edit %s failed: %s", entry.id, exc)
                session.sync()  # a failure midway may have left the head rebuilt without a superseded fact
            return outcome

    def _count(self, outcome: Outcome, base_id: int, n: int = 1) -> Outcome:
        setattr(self.stats, outcome.value, getattr(self.stats, outcome.value) + n)
        if outcome is Outcome.DROPPED:  # its head may hold what the new holder replaces
            self._sessions.pop(base_id, None)
        return outcome

    def _session(self, base_id: int, alias: str) -> EditSession:
        """The warm head of a model, brought up to date with the log. At most `heads` stay
        loaded; the least recently used is dropped first."""
        session = self._sessions.pop(base_id, None)
        if session is None:
            while len(self._sessions) >= self.settings.heads:
                self._sessions.pop(next(iter(self._sessions)))
            session = EditSession(self.store, alias, device=self.settings.device, progress=self.progress)
        elif session.sync():
            self.stats.rebuilds += 1
        self._sessions[base_id] = session  # most recently used last
        return session
