"""Long work asked for over HTTP: a compile, a causal trace, a publish to the Hub, key statistics. Run by a
worker, results in the database."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from factstore import config
from factstore.domain import Job, TracedFact
from factstore.errors import FactStoreError, HubError, InvalidEditRequest, LeaseLost, ScopeError
from factstore.hub import check_repo_id, has_credentials
from factstore.options import KINDS, CompileOptions, PublishOptions, TraceOptions, TraceSettings
from factstore.progress import SILENT, Reporter
from factstore.release import build, publish
from factstore.release.manifest import INT32
from factstore.storage.models import EVERY_WORKER_RUNS, STATS_JOBS
from factstore.storage.store import Store
from factstore.studies import tracing
from factstore.weights.replay import MODES
from factstore.worker import stats_jobs

CANCEL_POLL_SECONDS = 2.0  # how often a running job looks for a cancel in the database


class JobStopped(FactStoreError):
    """A running job was ended before it finished: cancelled, out of time, or its worker stopping."""

    def __init__(self, message: str, requeue: bool = False) -> None:
        super().__init__(message)
        self.requeue = requeue  # give it back to the queue (the worker stops) rather than fail it


class StopCheck:
    """Called between a job's batches of work: raises JobStopped once the job was cancelled, ran
    past FACTSTORE_JOB_SECONDS, or its worker was asked to stop."""

    def __init__(self, store: Store, job_id: int, stopping: threading.Event, seconds: float) -> None:
        self.store, self.job_id, self.stopping, self.seconds = store, job_id, stopping, seconds
        self.started = self.polled = time.monotonic()

    def now(self) -> None:
        """The check, reading the database now (between a job's phases)."""
        self.polled = -CANCEL_POLL_SECONDS
        self()

    def __call__(self) -> None:
        now = time.monotonic()
        if self.stopping.is_set():
            raise JobStopped("its worker is stopping", requeue=True)
        if now - self.started > self.seconds:
            raise JobStopped(f"stopped after {self.seconds:g} s, the limit (FACTSTORE_JOB_SECONDS)")
        if now - self.polled >= CANCEL_POLL_SECONDS:
            self.polled = now
            if self.store.stop_requested(self.job_id):
                raise JobStopped("cancelled while running")


def check_params(kind: str, params: dict) -> dict:
    """The parameters of a job as stored, or InvalidEditRequest (checked at submission)."""
    if kind == "compile":
        mode = params.get("mode")  # None: the log's default (band for a band log, else joint)
        if mode is not None and mode not in MODES:
            raise InvalidEditRequest(f"unknown compile mode {mode!r}; use {' or '.join(MODES)}")
        return {"mode": mode}
    if kind == "trace":
        samples, most = int(params.get("samples") or 10), config.settings().trace_max_samples
        if not 1 <= samples <= most:
            raise InvalidEditRequest(
                f"samples must be between 1 and {most} (FACTSTORE_TRACE_MAX_SAMPLES), not {samples}"
            )
        return {
            "prompt": params["prompt"],
            "subject": params["subject"],
            "target": params.get("target"),
            "edit_id": params.get("edit_id"),
            "samples": samples,
        }
    if kind == "publish":
        version = params.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= INT32:
            raise InvalidEditRequest(f"a publish job names a release version (1 or more), not {version!r}")
        try:
            check_repo_id(str(params.get("repo")))
        except HubError as exc:
            raise InvalidEditRequest(str(exc)) from None
        flags = {name: params.get(name, False) for name in ("private", "with_stats", "allow_degraded")}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise InvalidEditRequest("private, with_stats and allow_degraded are true or false")
        return {"version": version, "repo": str(params["repo"]), **flags}
    if kind in STATS_JOBS:
        return stats_jobs.check_params(kind, params)
    raise InvalidEditRequest(f"unknown job kind {kind!r}")


def runnable_kinds() -> tuple[str, ...]:
    """The job kinds this process can run: publish only with Hub credentials of its own and
    FACTSTORE_PUBLISH_REPOS naming where a job may send them (a write token must not choose);
    statistics jobs only with a statistics share (FACTSTORE_STATS_SHARE)."""
    settings = config.settings()
    publish = ("publish",) if settings.publish_repos and has_credentials() else ()
    shared = STATS_JOBS if settings.stats_share else ()
    return (*EVERY_WORKER_RUNS, *publish, *shared)


def check_publish_target(repo: str) -> None:
    """REPO is one FACTSTORE_PUBLISH_REPOS allows (NS/NAME, or NS/* for a namespace), else ScopeError."""
    allowed = [p.strip() for p in (config.settings().publish_repos or "").split(",") if p.strip()]
    namespace = repo.split("/", 1)[0]
    if repo not in allowed and f"{namespace}/*" not in allowed:
        raise ScopeError(
            f"this worker may not publish to {repo}: FACTSTORE_PUBLISH_REPOS allows {', '.join(allowed) or 'nothing'}"
        )


def run(
    store: Store,
    job: Job,
    holder: str,
    device: str | None,
    progress: Reporter = SILENT,
    stopping: threading.Event | None = None,
) -> Job | None:
    """Do one claimed job and store its result (or its one-line error). A trace is checked
    between batches, a compile before it starts and a publish before its compile and before its
    upload (StopCheck); a compile that wrote its release or a publish that sent it is done
    whatever a later cancel says. One stopped because the worker is stopping goes back to the
    queue (None is returned)."""
    # statistics take as long as they take (checkpointed); a cancel still ends a shard between batches
    seconds = float("inf") if job.kind == stats_jobs.SHARD else config.settings().job_seconds
    stop = StopCheck(store, job.id, stopping or threading.Event(), seconds)
    try:
        if job.kind == "compile":
            stop.now()
            compiled = CompileOptions(mode=job.params["mode"])
            release, created = build.build(store, job.model, compiled, device=device, progress=progress)
            result = {**release.to_json(), "path": None, "created": created}
            return store.finish_job(job.id, holder, result=result, happened=True)  # the release exists now
        if job.kind == "publish":
            p = check_params("publish", job.params)  # as validated at submission, checked again here
            check_publish_target(p["repo"])
            options = PublishOptions(
                private=p["private"],
                endpoint=os.environ.get("HF_ENDPOINT") or None,  # the worker's own Hub, read now, as its token is
                with_stats=p["with_stats"],
                allow_degraded=p["allow_degraded"],
                version=p["version"],
            )
            mode = publish.release_mode(store, job.model, p["version"])  # refused before anything is compiled
            stop.now()
            build.build(store, job.model, CompileOptions(mode=mode), device=device, progress=progress)
            stop.now()  # the last moment a cancel counts: past it the release goes to the Hub
            published = publish.publish(store, job.model, p["repo"], options, device=device, progress=progress)
            return store.finish_job(job.id, holder, result=published.to_json(), happened=True)
        if job.kind == stats_jobs.SHARD:
            stop.now()
            result = stats_jobs.run_shard(store, job, device, progress, stop=stop)
            return store.finish_job(job.id, holder, result=result)
        if job.kind == stats_jobs.MERGE:
            stop.now()
            result = stats_jobs.run_merge(store, job, progress)
            return store.finish_job(job.id, holder, result=result, happened=True)  # C is recorded now
        with tempfile.TemporaryDirectory(prefix="factstore-trace-") as folder:
            p = job.params
            fact = TracedFact(p["prompt"], p["subject"], p.get("target"))
            traced = TraceOptions(out=folder, settings=TraceSettings(samples=p["samples"], kinds=KINDS))
            report = tracing.trace_fact(store, job.model, fact, traced, device=device, progress=progress, stop=stop)
            files = {Path(png).name: ("image/png", Path(png).read_bytes()) for png in report["png"]}
            result = {k: v for k, v in report.items() if k not in ("png", "json")}
            return store.finish_job(job.id, holder, result=result, files=files)
    except JobStopped as exc:
        if exc.requeue:
            store.requeue_job(job.id, holder)
            return None
        return _finish_failed(store, job.id, holder, str(exc))
    except Exception as exc:  # any failure is the job's result; the worker goes on
        reason = str(exc) if isinstance(exc, FactStoreError) else f"{type(exc).__name__}: {exc}"
        return _finish_failed(store, job.id, holder, reason)


def _finish_failed(store: Store, job_id: int, holder: str, reason: str) -> Job | None:
    try:
        return store.finish_job(job_id, holder, error=reason)
    except LeaseLost:  # another worker took it over meanwhile: its result will be the job's
        return None
