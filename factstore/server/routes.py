"""/api/v1: thin handlers over factstore.api. Handlers are plain `def`: FastAPI runs them in its
thread pool, so database calls and model work never block the event loop."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from factstore import api, config
from factstore.domain import ApiTokenInfo, EditEntry
from factstore.errors import InvalidEditRequest
from factstore.results import Answer
from factstore.server.schemas import (
    AskIn,
    CompileIn,
    EditIn,
    ErrorOut,
    HealthOut,
    JobOut,
    LogQuery,
    ModelOut,
    PublishIn,
    ReleaseOut,
    StatsIn,
    TraceIn,
)
from factstore.server.service import Service

ALIAS = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
AliasPath = Annotated[str, Path(pattern=ALIAS, description="A registered model's alias.")]
IdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200, min_length=1)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "content": {"application/problem+json": {}}} for code in (401, 403, 404, 409, 422, 503)
}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "content": {"application/problem+json": {}}, "description": "Too many requests"}
}
# Declares the bearer scheme in /openapi.json (the Authorize button in /docs); a missing or
# non-bearer Authorization header is None here, and the service decides (loopback reads are open).
BEARER = HTTPBearer(auto_error=False, description="An API token from `factstore token create`.")

router = APIRouter(prefix="/api/v1", responses=ERRORS)


def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return (credentials.credentials.strip() or None) if credentials else None


def reader(
    request: Request, svc: Annotated[Service, Depends(service)], credentials: Credentials
) -> ApiTokenInfo | None:
    return svc.reader(_token(credentials), request.client.host if request.client else None)


def writer(svc: Annotated[Service, Depends(service)], credentials: Credentials) -> ApiTokenInfo:
    return svc.writer(_token(credentials))


Svc = Annotated[Service, Depends(service)]
Reader = Annotated[ApiTokenInfo | None, Depends(reader)]
Writer = Annotated[ApiTokenInfo, Depends(writer)]


def _idempotency(who: ApiTokenInfo, where: str, key: str | None) -> str | None:
    return api.idempotency_hash(who.name, where, key) if key else None


@router.get("/models", response_model=list[ModelOut])
def list_models(svc: Svc, _who: Reader) -> list[dict]:
    return [svc.model_json(m) for m in api.list_models(svc.store)]


@router.get("/models/{alias}", response_model=ModelOut)
def get_model(alias: AliasPath, svc: Svc, _who: Reader) -> dict:
    return svc.model_json(svc.store.get_base_model(alias))


@router.post("/models/{alias}/edits", status_code=202, response_model=EditEntry, responses=TOO_MANY)
def submit_edit(
    alias: AliasPath, body: EditIn, svc: Svc, who: Writer, response: Response, key: IdempotencyKey = None
) -> EditEntry:
    """Check the request with the model's tokenizer and queue it; a worker computes it."""
    checks = svc.checks(alias)  # an unknown model is refused (404) before the request is checked
    entry, created = api.submit_edit(
        svc.store,
        alias,
        api.EditRequest(body.prompt, body.subject, body.target, relation_id=body.relation),
        api.EditOptions(layer=body.layer, note=body.note, requested_by=who.name),
        idempotency=_idempotency(who, f"{alias}/edits", key),
        checks=checks,
        max_pending=config.settings().max_pending,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return entry


@router.get("/models/{alias}/edits", response_model=list[EditEntry])
def list_edits(
    alias: AliasPath,
    svc: Svc,
    _who: Reader,
    response: Response,
    q: Annotated[LogQuery, Query()],
) -> list[EditEntry]:
    """A page of the log (computed edits in seq order, then requests), optionally only one status,
    subjects containing SUBJECT (case-insensitive) and one requester; X-Total-Count counts them all."""
    match = api.LogMatch(q.status, q.subject or None, q.requested_by or None)
    response.headers["X-Total-Count"] = str(api.count_log(svc.store, alias, match))
    return api.list_log(svc.store, alias, match, limit=q.limit, offset=q.offset)


@router.get("/edits/{edit_id}", response_model=EditEntry)
def get_edit(edit_id: IdPath, svc: Svc, _who: Reader) -> EditEntry:
    return api.get_entry(svc.store, edit_id)


@router.post("/edits/{edit_id}/retract", response_model=EditEntry)
def retract_edit(edit_id: IdPath, svc: Svc, who: Writer) -> EditEntry:
    """Retract an active edit (its requester, or an admin token for anyone's); recorded with who and when."""
    api.retract_edit(svc.store, edit_id, who)
    return api.get_entry(svc.store, edit_id)


@router.post("/edits/{edit_id}/withdraw", response_model=EditEntry)
def withdraw_edit(edit_id: IdPath, svc: Svc, who: Writer) -> EditEntry:
    """Withdraw a pending request (its requester, or an admin token for anyone's): it fails with
    who withdrew it and no worker computes it; 409 once a worker has claimed it."""
    return api.withdraw_edit(svc.store, edit_id, who)


@router.post("/models/{alias}/ask", response_model=Answer, responses=TOO_MANY)
async def ask(alias: AliasPath, body: AskIn, svc: Svc, who: Reader, request: Request) -> Answer:
    """The head's answer, computed on serve's own ask threads (FACTSTORE_ASK_THREADS), never on
    the pool other requests use; past the asks let wait (FACTSTORE_ASK_QUEUE) 503 at once, past a
    client's FACTSTORE_ASK_PER_MINUTE or its FACTSTORE_ASK_THREADS asks at once 429, each with
    Retry-After."""
    client = f"token {who.name}" if who is not None else f"address {request.client.host if request.client else '?'}"
    svc.ask_gate.admit(client)
    try:
        limiter = ask_limiter(request.app, svc.ask_threads)
        return await anyio.to_thread.run_sync(svc.ask, alias, body.prompt, body.top, limiter=limiter)
    finally:
        svc.ask_gate.release(client)


def ask_limiter(app: Any, threads: int) -> anyio.CapacityLimiter:
    """The ask threads' limiter, made on the event loop the first time (anyio binds it there)."""
    limiter = getattr(app.state, "ask_limiter", None)
    if limiter is None:
        limiter = app.state.ask_limiter = anyio.CapacityLimiter(threads)
    return limiter


@router.get("/models/{alias}/releases", response_model=list[ReleaseOut])
def list_releases(
    alias: AliasPath,
    svc: Svc,
    _who: Reader,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[dict]:
    """A page of releases by version; X-Total-Count says how many there are in all."""
    response.headers["X-Total-Count"] = str(api.count_releases(svc.store, alias))
    return [svc.release_json(r) for r in api.list_releases(svc.store, alias, limit=limit, offset=offset)]


@router.post("/models/{alias}/releases", status_code=202, response_model=JobOut)
def compile_release(
    alias: AliasPath,
    svc: Svc,
    who: Writer,
    response: Response,
    body: CompileIn | None = None,
    key: IdempotencyKey = None,
) -> dict:
    """Compile the active log into a release, as a job a worker runs."""
    job, created = api.submit_job(
        svc.store,
        alias,
        "compile",
        {"mode": body.mode if body else None},
        requested_by=who.name,
        idempotency=_idempotency(who, f"{alias}/releases", key),
        max_pending=config.settings().max_pending_jobs,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job.to_json()


@router.post("/models/{alias}/releases/{version}/publish", status_code=202, response_model=JobOut)
def publish_release(
    alias: AliasPath,
    version: IdPath,
    body: PublishIn,
    svc: Svc,
    who: Writer,
    response: Response,
    key: IdempotencyKey = None,
) -> dict:
    """Publish release VERSION (the current log's) to a Hub repository, as a job run by a worker
    with Hub credentials of its own; the token never travels through the API. The job waits,
    saying why, while no such worker runs."""
    job, created = api.queue_publish(
        svc.store,
        alias,
        body.repo,
        api.PublishOptions(
            private=body.private, with_stats=body.with_stats, allow_degraded=body.allow_degraded, version=version
        ),
        requested_by=who.name,
        idempotency=_idempotency(who, f"{alias}/releases/{version}/publish", key),
        max_pending=config.settings().max_pending_jobs,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job.to_json()


@router.post("/models/{alias}/stats", status_code=202, response_model=JobOut)
def compute_stats(
    alias: AliasPath, body: StatsIn, svc: Svc, who: Writer, response: Response, key: IdempotencyKey = None
) -> dict:
    """Key statistics C of some layers as shard jobs and one merge job (returned; its params name
    the shard jobs), run by workers that share FACTSTORE_STATS_SHARE."""
    job, created = api.queue_stats(
        svc.store,
        alias,
        api.StatsOptions(layers=tuple(body.layers), corpus=body.corpus, tokens=body.tokens),
        body.jobs,
        requested_by=who.name,
        idempotency=_idempotency(who, f"{alias}/stats", key),
        max_pending=config.settings().max_pending_jobs,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job.to_json()


@router.post("/models/{alias}/traces", status_code=202, response_model=JobOut)
def trace(
    alias: AliasPath, body: TraceIn, svc: Svc, who: Writer, response: Response, key: IdempotencyKey = None
) -> dict:
    """Causal tracing of one fact, as a job; its heatmaps come back as the job's files."""
    if body.edit_id is not None and api.get_entry(svc.store, body.edit_id).model != alias:
        raise InvalidEditRequest(f"edit {body.edit_id} is not an edit of {alias}")
    job, created = api.submit_job(
        svc.store,
        alias,
        "trace",
        body.model_dump(),
        requested_by=who.name,
        idempotency=_idempotency(who, f"{alias}/traces", key),
        max_pending=config.settings().max_pending_jobs,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job.to_json()


@router.get("/models/{alias}/jobs", response_model=list[JobOut])
def list_jobs(alias: AliasPath, svc: Svc, _who: Reader) -> list[dict]:
    return [j.to_json() for j in api.list_jobs(svc.store, alias)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: IdPath, svc: Svc, _who: Reader) -> dict:
    return api.get_job(svc.store, job_id).to_json()


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: IdPath, svc: Svc, who: Writer) -> dict:
    """Cancel a job: a pending one at once, a running one at its worker's next check (status
    `cancelling`, then `cancelled`). Its requester or an admin token."""
    return api.cancel_job(svc.store, job_id, who).to_json()


@router.get("/jobs/{job_id}/files/{name}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_job_file(
    job_id: IdPath, name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")], svc: Svc, _who: Reader
) -> Response:
    media_type, data = svc.store.get_job_file(job_id, name)
    return Response(data, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})


health = APIRouter()


@health.get("/healthz", response_model=HealthOut)
def healthz() -> dict:
    """The process answers."""
    return {"status": "ok"}


@health.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(svc: Svc) -> JSONResponse:
    """Database reachable, schema at head, at least one live worker."""
    ready, report = svc.readiness()
    return JSONResponse(report, status_code=200 if ready else 503)
