"""Long work asked for over HTTP: a compile, a causal trace. Run by a worker, results in the database."""

from __future__ import annotations

import tempfile
from pathlib import Path

from factstore.analysis.causal_trace import KINDS, TraceSettings
from factstore.domain import Job
from factstore.errors import FactStoreError, InvalidEditRequest
from factstore.progress import SILENT, Reporter
from factstore.release import build
from factstore.storage.store import Store
from factstore.studies import tracing
from factstore.weights.replay import DEFAULT_MODE, MODES

TRACE_SAMPLES = (1, 50)  # bounds on noise samples per trace asked for over HTTP


def check_params(kind: str, params: dict) -> dict:
    """The parameters of a job as stored, or InvalidEditRequest (checked at submission)."""
    if kind == "compile":
        mode = params.get("mode") or DEFAULT_MODE
        if mode not in MODES:
            raise InvalidEditRequest(f"unknown compile mode {mode!r}; use {' or '.join(MODES)}")
        return {"mode": mode}
    if kind == "trace":
        samples = int(params.get("samples") or 10)
        if not TRACE_SAMPLES[0] <= samples <= TRACE_SAMPLES[1]:
            raise InvalidEditRequest(
                f"samples must be between {TRACE_SAMPLES[0]} and {TRACE_SAMPLES[1]}, not {samples}"
            )
        return {
            "prompt": params["prompt"],
            "subject": params["subject"],
            "target": params.get("target"),
            "edit_id": params.get("edit_id"),
            "samples": samples,
        }
    raise InvalidEditRequest(f"unknown job kind {kind!r}")


def run(store: Store, job: Job, holder: str, device: str | None, progress: Reporter = SILENT) -> Job:
    """Do one claimed job and store its result (or its one-line error)."""
    try:
        if job.kind == "compile":
            release, created = build.build(store, job.model, job.params["mode"], None, device, progress=progress)
            return store.finish_job(job.id, holder, result={**release.to_json(), "path": None, "created": created})
        with tempfile.TemporaryDirectory(prefix="factstore-trace-") as folder:
            p = job.params
            settings = TraceSettings(samples=p["samples"], kinds=KINDS)
            report = tracing.trace_fact(
                store,
                job.model,
                p["prompt"],
                p["subject"],
                p.get("target"),
                settings=settings,
                out=folder,
                device=device,
                progress=progress,
            )
            files = {Path(png).name: ("image/png", Path(png).read_bytes()) for png in report["png"]}
            result = {k: v for k, v in report.items() if k not in ("png", "json")}
            return store.finish_job(job.id, holder, result=result, files=files)
    except Exception as exc:  # any failure is the job's result; the worker goes on
        reason = str(exc) if isinstance(exc, FactStoreError) else f"{type(exc).__name__}: {exc}"
        return store.finish_job(job.id, holder, error=reason)
