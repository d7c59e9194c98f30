"""The edit queue: requests, per-model leases, workers and jobs.

A request is a `pending` edit row. A worker computes on a model's head only while it holds that
model's lease (a row with an expiry it renews by heartbeat); it claims pending rows (`SELECT ...
FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE) and
writes each result in one short transaction that checks the lease again, so a worker that lost
its lease (killed, paused past the expiry) can never commit: its claimed rows go back to
`pending` when the next worker takes the model, and each edit is computed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from factstore.config import lease_seconds
from factstore.domain import EditEntry, EditRequest, Job, LogMatch, NewEdit, StoredEdit, request_sha256
from factstore.errors import EditStateError, HeadChanged, LeaseLost, TooManyRequests, UnknownEdit, UnknownJob, shown
from factstore.storage import convert
from factstore.storage.base import StoreBase, refused
from factstore.storage.models import (
    EDIT_STATUSES,
    EVERY_WORKER_RUNS,
    JOB_NEEDS,
    QUEUED_STATUSES,
    STATS_MERGE,
    BaseModelRow,
    EditLayerRow,
    EditRow,
    JobFile,
    JobRow,
    ModelLease,
    WorkerRow,
)
from factstore.storage.notify import notify

CURRENT_STATUSES = ("active", "pending", "computing", "failed")  # what a model's log shows by default
ERROR_CHARS = 1000  # a failed request keeps the first line of its error, at most this long
MAX_ATTEMPTS = 3  # claims before a request (or job) whose workers keep dying is failed instead


def now() -> datetime:
    return datetime.now(timezone.utc)


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:ERROR_CHARS]


def idempotency_sha256(who: str, where: str, key: str) -> str:
    """Idempotency keys are scoped to the token that sent them and the endpoint (WHERE) they were sent to."""
    return hashlib.sha256(f"{who}\x00{where}\x00{key}".encode()).hexdigest()


def same_fact(base_id: int, subject: str, prompt: str, relation_id: str | None) -> list:
    """Conditions for the active edits a new edit of this fact supersedes."""
    same = (
        EditRow.prompt == prompt
        if relation_id is None
        else or_(EditRow.prompt == prompt, EditRow.relation_id == relation_id)
    )
    return [EditRow.base_model_id == base_id, EditRow.status == "active", EditRow.subject == subject, same]


def new_request_row(
    base_id: int,
    request: EditRequest,
    *,
    requested_by: str | None,
    note: str | None,
    requested_layer: str | None = None,
    idempotency: str | None = None,
) -> EditRow:
    return EditRow(
        base_model_id=base_id,
        prompt=request.prompt,
        subject=request.subject,
        target_new=request.target_new,
        target_true=request.target_true,
        relation_id=request.relation_id,
        request_sha256=request_sha256(request),
        requested_layer=requested_layer,
        status="pending",
        requested_by=requested_by,
        note=note,
        metrics={},
        idempotency_sha256=idempotency,
        attempts=0,
    )


def fill_computed(s: Session, row: EditRow, new: NewEdit) -> None:
    """Make ROW the model's next active edit: next seq, older edits of the fact superseded."""
    base_id = row.base_model_id
    s.execute(select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update())  # serialise writers per base
    seq = (s.scalar(select(func.max(EditRow.seq)).where(EditRow.base_model_id == base_id)) or 0) + 1
    req = new.request
    older = [
        r
        for r in s.scalars(select(EditRow).where(*same_fact(base_id, req.subject, req.prompt, req.relation_id)))
        if r.id != row.id
    ]
    for old in older:
        old.status = "superseded"
    convert.onto_row(row, new, skip=("request", "band", "requested_by", "note"))  # those are the request's
    row.seq, row.key_sha256 = seq, hashlib.sha256(new.key).hexdigest()
    row.value_sha256 = hashlib.sha256(new.value).hexdigest()
    row.status, row.error, row.updated_at = "active", None, now()
    row.supersedes_id = older[-1].id if older else None
    row.band = [EditLayerRow(layer=a.layer, key=a.key, target=a.target) for a in new.band]
    s.flush()


class QueueVerbs(StoreBase):
    # requests ------------------------------------------------------------------------------

    def create_request(
        self,
        base_id: int,
        request: EditRequest,
        *,
        requested_layer: str | None = None,
        note: str | None = None,
        requested_by: str | None = None,
        idempotency: str | None = None,
        max_pending: int | None = None,
    ) -> tuple[EditEntry, bool]:
        """Store a pending request. With an idempotency hash already stored, return that row
        instead (created=False). With MAX_PENDING, a requester with that many requests not yet
        computed is refused (TooManyRequests; a replay is still answered; concurrent submissions
        can pass the limit by a few)."""
        try:
            with self._tx() as s:
                if idempotency is not None and (
                    found := s.scalar(select(EditRow).where(EditRow.idempotency_sha256 == idempotency))
                ):
                    return self._entry(s, found), False
                if max_pending is not None and requested_by is not None:
                    waiting = s.scalar(
                        select(func.count()).where(
                            EditRow.requested_by == requested_by, EditRow.status.in_(QUEUED_STATUSES)
                        )
                    )
                    _within(waiting, max_pending, "requests of this requester wait to be computed")
                row = new_request_row(
                    base_id,
                    request,
                    requested_by=requested_by,
                    note=note,
                    requested_layer=requested_layer,
                    idempotency=idempotency,
                )
                s.add(row)
                s.flush()
                notify(s)
                return self._entry(s, row), True
        except IntegrityError as exc:  # the same key sent twice at once: the other insert won
            if idempotency is None:
                raise refused(exc, "store the request") from None
            with self._tx(write=False) as s:
                found = s.scalar(select(EditRow).where(EditRow.idempotency_sha256 == idempotency))
                if found is None:
                    raise refused(exc, "store the request") from None
                return self._entry(s, found), False

    @staticmethod
    def _entry(s: Session, row: EditRow) -> EditEntry:
        alias = s.scalar(select(BaseModelRow.alias).where(BaseModelRow.id == row.base_model_id)) or "?"
        return convert.entry(row, alias)

    def get_entry(self, edit_id: int) -> EditEntry:
        with self._tx(write=False) as s:
            row = s.get(EditRow, edit_id)
            if row is None:
                raise UnknownEdit(f"no edit with id {edit_id}")
            return self._entry(s, row)

    def list_entries(
        self, base_id: int, match: LogMatch = LogMatch(), *, limit: int | None = None, offset: int = 0
    ) -> list[EditEntry]:
        """A model's log: computed edits in seq order, then requests in arrival order; those MATCH
        selects."""
        query = _log_query(base_id, match).order_by(EditRow.seq.is_(None), EditRow.seq, EditRow.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as s:
            alias = s.scalar(select(BaseModelRow.alias).where(BaseModelRow.id == base_id)) or "?"
            return [convert.entry(r, alias) for r in s.scalars(query)]

    def count_matching(self, base_id: int, match: LogMatch) -> int:
        """How many rows list_entries would give without a limit."""
        with self._tx(write=False) as s:
            return int(s.scalar(select(func.count()).select_from(_log_query(base_id, match).subquery())) or 0)

    def count_entries(self, base_id: int) -> dict[str, int]:
        with self._tx(write=False) as s:
            rows = s.execute(
                select(EditRow.status, func.count()).where(EditRow.base_model_id == base_id).group_by(EditRow.status)
            )
            return {status: int(n) for status, n in rows}

    def list_active_ids(self, base_id: int) -> list[int]:
        """The model's log as a worker compares it with its head: active edit ids in seq order."""
        with self._tx(write=False) as s:
            return list(
                s.scalars(
                    select(EditRow.id)
                    .where(EditRow.base_model_id == base_id, EditRow.status == "active")
                    .order_by(EditRow.seq)
                )
            )

    def list_queued_models(self) -> list[int]:
        """Base models with requests pending, or computing (perhaps by a worker that died: whoever
        takes the model's lease after it expired puts those back in the queue)."""
        with self._tx(write=False) as s:
            return list(s.scalars(select(EditRow.base_model_id).where(EditRow.status.in_(QUEUED_STATUSES)).distinct()))

    def list_waiting_models(self, holder: str) -> list[int]:
        """Base models with pending requests that no other worker holds a live lease on: the
        models a worker's fair turn gives way to (a model another worker computes is served)."""
        with self._tx(write=False) as s:
            pending = set(s.scalars(select(EditRow.base_model_id).where(EditRow.status == "pending").distinct()))
            moment = now()
            taken = {
                lease.base_model_id
                for lease in s.scalars(select(ModelLease).where(ModelLease.base_model_id.in_(pending)))
                if lease.holder != holder and convert.aware(lease.expires_at) > moment
            }
            return sorted(pending - taken)

    # leases -----------------------------------------------------------------------------

    def acquire_lease(self, base_id: int, holder: str, seconds: float) -> bool:
        """Take or renew the model's lease. Requests of the model left `computing` go back to
        pending: an expired holder's, and this holder's own from a turn a database failure broke
        (a holder computes nothing while it asks for the lease)."""
        try:
            with self._tx() as s:
                s.execute(select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update())
                lease = s.get(ModelLease, base_id, with_for_update=True)
                moment = now()
                if lease is not None and lease.holder != holder and convert.aware(lease.expires_at) > moment:
                    return False
                if lease is None:
                    s.add(
                        ModelLease(base_model_id=base_id, holder=holder, expires_at=moment + timedelta(seconds=seconds))
                    )
                else:
                    lease.holder, lease.expires_at = holder, moment + timedelta(seconds=seconds)
                s.execute(
                    update(EditRow)
                    .where(EditRow.base_model_id == base_id, EditRow.status == "computing")
                    .values(status="pending", claimed_by=None, updated_at=moment)
                )
                return True
        except IntegrityError:  # two first-ever takers inserted at once: the other one has it
            return False

    def renew_leases(self, holder: str, seconds: float) -> list[int]:
        """Extend every lease HOLDER still has (and its heartbeat); returns those model ids."""
        with self._tx() as s:
            moment = now()
            s.execute(update(WorkerRow).where(WorkerRow.id == holder).values(heartbeat_at=moment))
            held = list(s.scalars(select(ModelLease.base_model_id).where(ModelLease.holder == holder)))
            s.execute(
                update(ModelLease)
                .where(ModelLease.holder == holder)
                .values(expires_at=moment + timedelta(seconds=seconds))
            )
            return held

    def release_lease(self, base_id: int, holder: str) -> None:
        """Give the model up; requests it claimed but did not compute go back to pending."""
        with self._tx() as s:
            s.execute(
                update(EditRow)
                .where(EditRow.base_model_id == base_id, EditRow.status == "computing", EditRow.claimed_by == holder)
                .values(status="pending", claimed_by=None, updated_at=now())
            )
            s.execute(delete(ModelLease).where(ModelLease.base_model_id == base_id, ModelLease.holder == holder))

    @staticmethod
    def _check_lease(s: Session, base_id: int, holder: str) -> None:
        lease = s.get(ModelLease, base_id, with_for_update=True)
        if lease is None or lease.holder != holder:
            raise LeaseLost(
                f"this worker no longer holds model {base_id}; its result is dropped and the request recomputed"
            )

    # claiming and finishing -------------------------------------------------------------------

    def claim_requests(
        self, base_id: int, holder: str, limit: int, only: int | list[int] | None = None
    ) -> list[EditEntry]:
        """Mark up to LIMIT pending requests of the model (or only those of the ids ONLY) computing
        by HOLDER, oldest first. Needs the model's lease."""
        with self._tx() as s:
            self._check_lease(s, base_id, holder)
            query = select(EditRow).where(EditRow.base_model_id == base_id, EditRow.status == "pending")
            if only is not None:
                query = query.where(EditRow.id.in_([only] if isinstance(only, int) else only))
            rows = s.scalars(query.order_by(EditRow.id).limit(limit).with_for_update(skip_locked=True)).all()
            claimed = []
            for row in rows:
                if (
                    row.attempts >= MAX_ATTEMPTS
                ):  # every worker that took it stopped before finishing (killed, out of memory)
                    row.status, row.updated_at = "failed", now()
                    row.error = (
                        f"gave up after {row.attempts} attempts: each worker computing it stopped before finishing"
                    )
                    continue
                row.status, row.claimed_by, row.updated_at, row.attempts = "computing", holder, now(), row.attempts + 1
                claimed.append(row)
            s.flush()
            return [self._entry(s, r) for r in claimed]

    def complete_request(self, edit_id: int, holder: str, new: NewEdit, *, computed_on: list[int]) -> StoredEdit:
        """A computed request becomes the model's next active edit, if HOLDER still holds the model
        and the log is still the one it was computed on (COMPUTED_ON: the active edit ids of the
        head, in seq order, without the ones it supersedes). If the log changed meanwhile (a
        retraction, an import), the request goes back to pending and HeadChanged is raised."""
        with self._tx() as s:
            base_id = s.scalar(select(EditRow.base_model_id).where(EditRow.id == edit_id))
            if base_id is None:
                raise UnknownEdit(f"no edit with id {edit_id}")
            # lock order, everywhere: base model, lease, edit rows
            s.execute(select(BaseModelRow.id).where(BaseModelRow.id == base_id).with_for_update())
            self._check_lease(s, base_id, holder)
            row = s.get_one(EditRow, edit_id, with_for_update=True)
            if row.status != "computing" or row.claimed_by != holder:
                raise LeaseLost(
                    f"edit {edit_id} is {row.status}, no longer claimed by this worker; its result is dropped"
                )
            req = new.request
            replaced = {
                r.id
                for r in s.scalars(select(EditRow).where(*same_fact(base_id, req.subject, req.prompt, req.relation_id)))
            }
            active = s.scalars(
                select(EditRow.id)
                .where(EditRow.base_model_id == base_id, EditRow.status == "active")
                .order_by(EditRow.seq)
            )
            if [i for i in active if i not in replaced] != computed_on:  # committed below, then raised
                row.status, row.claimed_by, row.updated_at, row.attempts = (
                    "pending",
                    None,
                    now(),
                    max(row.attempts - 1, 0),
                )
            else:
                fill_computed(s, row, new)
                return convert.edit(row)
        raise HeadChanged(
            f"the log of model {base_id} changed while edit {edit_id} was computed; it goes back to the queue"
        )

    def withdraw_request(self, edit_id: int, reason: str) -> None:
        """A request its submitter gave up on (an interrupted `edit add`) fails instead of being
        computed later by a worker; a computed edit is left as it is."""
        with self._tx() as s:
            row = s.get(EditRow, edit_id, with_for_update=True)
            if row is not None and row.status in QUEUED_STATUSES:
                row.status, row.error, row.claimed_by, row.updated_at = "failed", one_line(reason), None, now()

    def withdraw_pending(self, edit_id: int, reason: str) -> EditEntry:
        """Fail a pending request with REASON; EditStateError once a worker has claimed it (a
        claim taken from under a worker would cost the rest of its batch an attempt)."""
        with self._tx() as s:
            row = s.get(EditRow, edit_id, with_for_update=True)
            if row is None:
                raise UnknownEdit(f"no edit with id {edit_id}")
            if row.status != "pending":
                hint = {"computing": "; retract it once it is computed", "active": "; retract it instead"}
                raise EditStateError(
                    f"edit {edit_id} is {row.status}: only a pending request can be withdrawn{hint.get(row.status, '')}"
                )
            row.status, row.error, row.claimed_by, row.updated_at = "failed", one_line(reason), None, now()
            s.flush()
            return self._entry(s, row)

    def fail_request(self, edit_id: int, holder: str, error: str) -> EditEntry:
        with self._tx() as s:
            row = s.get(EditRow, edit_id, with_for_update=True)
            if row is None:
                raise UnknownEdit(f"no edit with id {edit_id}")
            if row.status != "computing" or row.claimed_by != holder:
                raise LeaseLost(f"edit {edit_id} is {row.status}, no longer claimed by this worker")
            row.status, row.error, row.updated_at = "failed", one_line(error), now()
            s.flush()
            return self._entry(s, row)

    # workers ------------------------------------------------------------------------------

    def register_worker(self, worker_id: str, models: list[str], kinds: Sequence[str] = EVERY_WORKER_RUNS) -> None:
        """A worker starts: the models it serves (empty: all) and the job kinds it runs."""
        with self._tx() as s:
            s.merge(
                WorkerRow(
                    id=worker_id,
                    models=models,
                    kinds=list(kinds),
                    started_at=now(),
                    heartbeat_at=now(),
                    stopped_at=None,
                )
            )

    def stop_worker(self, worker_id: str) -> None:
        """A clean exit: its leases are given up and its claimed requests go back to pending."""
        with self._tx() as s:
            held = list(s.scalars(select(ModelLease.base_model_id).where(ModelLease.holder == worker_id)))
            s.execute(
                update(EditRow)
                .where(EditRow.status == "computing", EditRow.claimed_by == worker_id)
                .values(status="pending", claimed_by=None, updated_at=now())
            )
            s.execute(
                update(JobRow)
                .where(JobRow.status == "running", JobRow.claimed_by == worker_id)
                .values(status="pending", claimed_by=None, updated_at=now())
            )
            if held:
                s.execute(delete(ModelLease).where(ModelLease.holder == worker_id))
            s.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(stopped_at=now()))

    def list_live_workers(self, within_seconds: float) -> list[dict]:
        """Workers whose heartbeat is at most WITHIN_SECONDS old and that have not stopped."""
        since = now() - timedelta(seconds=within_seconds)
        with self._tx(write=False) as s:
            rows = s.scalars(
                select(WorkerRow).where(WorkerRow.stopped_at.is_(None)).order_by(WorkerRow.started_at)
            ).all()
            return [
                {"id": r.id, "models": list(r.models), "heartbeat_at": convert.iso(r.heartbeat_at)}
                for r in rows
                if convert.aware(r.heartbeat_at) >= since
            ]

    # jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        base_id: int,
        kind: str,
        params: dict,
        *,
        requested_by: str | None,
        idempotency: str | None = None,
        max_pending: int | None = None,
    ) -> tuple[Job, bool]:
        """Store a pending job (or return the one stored under IDEMPOTENCY, created=False). With
        MAX_PENDING, a requester with that many jobs pending or running is refused (TooManyRequests)."""
        return self.create_job_group(
            base_id, [], (kind, params), requested_by=requested_by, idempotency=idempotency, max_pending=max_pending
        )

    def create_job_group(
        self,
        base_id: int,
        parts: list[tuple[str, dict]],
        last: tuple[str, dict],
        *,
        requested_by: str | None,
        idempotency: str | None = None,
        max_pending: int | None = None,
    ) -> tuple[Job, bool]:
        """PARTS (kind, params) and LAST, whose params get "after": the ids of the parts (when there
        are any), stored in one transaction (all or none; MAX_PENDING counts them all). Returns (LAST's job,
        created); under IDEMPOTENCY (LAST's key) a group stored before is returned as it was."""
        try:
            with self._tx() as s:
                if idempotency is not None and (
                    found := s.scalar(select(JobRow).where(JobRow.idempotency_sha256 == idempotency))
                ):
                    return self._job(s, found), False
                if max_pending is not None and requested_by is not None:
                    waiting = s.scalar(
                        select(func.count()).where(
                            JobRow.requested_by == requested_by, JobRow.status.in_(("pending", *RUNNING_JOB))
                        )
                    )
                    _within(
                        int(waiting or 0) + len(parts), max_pending, "jobs of this requester are pending or running"
                    )
                rows = [self._pending(base_id, kind, params, requested_by) for kind, params in parts]
                s.add_all(rows)
                s.flush()
                kind, params = last
                row = self._pending(
                    base_id, kind, {**params, "after": [r.id for r in rows]} if rows else params, requested_by
                )
                row.idempotency_sha256 = idempotency
                s.add(row)
                s.flush()
                notify(s)
                return self._job(s, row), True
        except IntegrityError as exc:  # the same key sent twice at once: the other group won
            with self._tx(write=False) as s:
                found = (
                    s.scalar(select(JobRow).where(JobRow.idempotency_sha256 == idempotency)) if idempotency else None
                )
                if found is None:
                    raise refused(exc, "store the job") from None
                return self._job(s, found), False

    @staticmethod
    def _pending(base_id: int, kind: str, params: dict, requested_by: str | None) -> JobRow:
        return JobRow(
            kind=kind, base_model_id=base_id, params=params, status="pending", requested_by=requested_by, attempts=0
        )

    @staticmethod
    def _job(s: Session, row: JobRow, workers: list[tuple[list[str], list[str] | None]] | None = None) -> Job:
        """WORKERS: the live workers' (models, kinds), when the caller read them for several jobs."""
        alias = s.scalar(select(BaseModelRow.alias).where(BaseModelRow.id == row.base_model_id)) or "?"
        files = list(s.scalars(select(JobFile.name).where(JobFile.job_id == row.id).order_by(JobFile.name)))
        waiting = None
        if row.status == "pending":
            waiting = _waiting(row, alias, _live_worker_kinds(s) if workers is None else workers)
            if waiting is None and row.kind == STATS_MERGE and _shards_running(s, row):
                waiting = "its shard jobs have not all ended"
        return convert.job(row, alias, files, waiting)

    def get_job(self, job_id: int) -> Job:
        with self._tx(write=False) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise UnknownJob(f"no job with id {job_id}")
            return self._job(s, row)

    def list_jobs(self, base_id: int, kind: str | None = None, limit: int = 50) -> list[Job]:
        query = select(JobRow).where(JobRow.base_model_id == base_id)
        if kind is not None:
            query = query.where(JobRow.kind == kind)
        with self._tx(write=False) as s:
            workers = _live_worker_kinds(s)  # once for the list, not once per pending job
            return [self._job(s, r, workers) for r in s.scalars(query.order_by(JobRow.id.desc()).limit(limit))]

    def claim_job(
        self, holder: str, base_ids: list[int] | None, stale_after: float, kinds: Sequence[str] = EVERY_WORKER_RUNS
    ) -> Job | None:
        """The oldest pending job of KINDS (or one whose worker's heartbeat is older than
        STALE_AFTER) of BASE_IDS (None: any)."""
        orphaned = JobRow.status.in_(RUNNING_JOB) & JobRow.claimed_by.not_in(_live_workers(stale_after))
        query = select(JobRow).where(or_(JobRow.status == "pending", orphaned), JobRow.kind.in_(list(kinds)))
        if base_ids is not None:
            query = query.where(JobRow.base_model_id.in_(base_ids))
        with self._tx() as s:
            waiting: list[int] = []  # merges whose shards are not all in: left pending
            while (
                row := s.scalar(
                    query.where(JobRow.id.not_in(waiting))
                    .order_by(JobRow.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
            ) is not None:
                if row.kind == STATS_MERGE and _shards_running(s, row):  # read after the row is locked
                    waiting.append(row.id)
                    continue
                if row.status == "cancelling":  # its worker died after the cancel
                    row.status, row.error, row.updated_at = "cancelled", "cancelled while running", now()
                    s.flush()
                    continue
                if row.attempts < MAX_ATTEMPTS:
                    row.status, row.claimed_by, row.updated_at, row.attempts = (
                        "running",
                        holder,
                        now(),
                        row.attempts + 1,
                    )
                    s.flush()
                    return self._job(s, row)
                row.status, row.updated_at = "failed", now()
                row.error = f"gave up after {row.attempts} attempts: each worker running it stopped before finishing"
                s.flush()
            return None

    def finish_job(
        self,
        job_id: int,
        holder: str,
        *,
        result: dict | None = None,
        error: str | None = None,
        files: dict[str, tuple[str, bytes]] | None = None,
        happened: bool = False,
    ) -> Job:
        """Record a job's result (and FILES: name -> (media type, bytes)) or its error. A job asked
        to stop is recorded as cancelled, unless HAPPENED: its result cannot be undone (a release
        written, a publish sent) and is recorded as done."""
        with self._tx() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or row.claimed_by != holder or row.status not in RUNNING_JOB:
                raise LeaseLost(f"job {job_id} is no longer this worker's")
            if row.status == "cancelling" and not happened:  # asked to stop: what it got to is not its result
                row.status, row.error, row.updated_at = "cancelled", "cancelled while running", now()
                s.flush()
                return self._job(s, row)
            row.status = "failed" if error is not None else "done"
            row.result, row.error, row.updated_at = result, None if error is None else one_line(error), now()
            for name, (media_type, data) in (files or {}).items():
                s.add(JobFile(job_id=job_id, name=name, media_type=media_type, data=data))
            s.flush()
            return self._job(s, row)

    def cancel_job(self, job_id: int) -> Job:
        """A pending job is cancelled at once; a running one is marked, and its worker stops it at
        its next check (stop_requested)."""
        with self._tx() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None:
                raise UnknownJob(f"no job with id {job_id}")
            if row.status == "pending":
                row.status, row.error = "cancelled", "cancelled before a worker took it"
            elif row.status == "running":
                row.status = "cancelling"
            elif row.status != "cancelling":
                raise EditStateError(f"job {job_id} is already {row.status}")
            row.updated_at = now()
            s.flush()
            return self._job(s, row)

    def stop_requested(self, job_id: int) -> bool:
        """Whether someone asked to cancel this running job."""
        with self._tx(write=False) as s:
            return s.scalar(select(JobRow.status).where(JobRow.id == job_id)) == "cancelling"

    def requeue_job(self, job_id: int, holder: str) -> None:
        """Give a job this worker stopped without finishing back to the queue (the claim does not count)."""
        with self._tx() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is not None and row.claimed_by == holder and row.status == "running":
                row.status, row.claimed_by, row.attempts, row.updated_at = "pending", None, row.attempts - 1, now()

    def get_job_file(self, job_id: int, name: str) -> tuple[str, bytes]:
        with self._tx(write=False) as s:
            row = s.get(JobFile, (job_id, name))
            if row is None:
                raise UnknownJob(f"job {job_id} has no file {shown(name)}")
            return row.media_type, bytes(row.data)


RUNNING_JOB = ("running", "cancelling")  # a job a worker holds (cancelling: asked to stop at its next check)


def _within(waiting: int | None, most: int, what: str) -> None:
    """TooManyRequests when a requester already has MOST of WHAT (a per-token bound on the queue)."""
    if int(waiting or 0) >= most:
        raise TooManyRequests(f"{most} {what}; submit more once some are done", retry_after=30)


def _live_workers(stale_after: float) -> Select[str]:
    return select(WorkerRow.id).where(
        WorkerRow.stopped_at.is_(None), WorkerRow.heartbeat_at >= now() - timedelta(seconds=stale_after)
    )


def _live_worker_kinds(s: Session) -> list[tuple[list[str], list[str] | None]]:
    """(models served, job kinds run) of every live worker."""
    query = select(WorkerRow.models, WorkerRow.kinds).where(WorkerRow.id.in_(_live_workers(3 * lease_seconds())))
    return [(models, kinds) for models, kinds in s.execute(query).all()]


def _log_query(base_id: int, match: LogMatch) -> Select:
    """The rows of a model's log that MATCH selects. STATUS is one of EDIT_STATUSES, "current"
    (active edits and the queue: pending, computing, failed) or "all"; SUBJECT matches any part
    of the subject, ignoring the case of ASCII letters (others match as typed; % and _ are plain
    characters)."""
    if match.status not in (*EDIT_STATUSES, "current", "all"):
        raise EditStateError(
            f"unknown status {shown(match.status)}; use one of {', '.join(EDIT_STATUSES)}, current or all"
        )
    query = select(EditRow).where(EditRow.base_model_id == base_id)
    if match.status == "current":
        query = query.where(EditRow.status.in_(CURRENT_STATUSES))
    elif match.status != "all":
        query = query.where(EditRow.status == match.status)
    if match.subject:
        plain = match.subject.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(EditRow.subject.ilike(f"%{plain}%", escape="\\"))  # ASCII letters fold; others as typed
    if match.requested_by is not None:
        query = query.where(EditRow.requested_by == match.requested_by)
    return query


def _shards_running(s: Session, merge: JobRow) -> bool:
    """Whether a merge job's shard jobs are not all ended (pending, running or being cancelled)."""
    after = [i for i in (merge.params or {}).get("after", []) if isinstance(i, int)]
    unfinished = select(func.count()).where(JobRow.id.in_(after), JobRow.status.in_(("pending", *RUNNING_JOB)))
    return bool(after) and bool(s.scalar(unfinished))


def _waiting(row: JobRow, alias: str, workers: list[tuple[list[str], list[str] | None]]) -> str | None:
    """Why a pending job waits, when no live worker serving its model runs its kind; else None."""
    serving = [kinds for models, kinds in workers if not models or alias in models]
    if not serving:
        return f"no worker serving {alias} is running"
    if any(row.kind in (kinds if kinds is not None else EVERY_WORKER_RUNS) for kinds in serving):
        return None
    need = JOB_NEEDS.get(row.kind, "")
    return f"no running worker serving {alias} runs {row.kind} jobs" + (f": one needs {need}" if need else "")
