"""Every failure answers RFC 9457 problem details (`application/problem+json`: type, title,
status, detail) with a fitting status; never a traceback, never the rejected input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from factstore.errors import (
    DatabaseError,
    DatabaseUnavailable,
    EditFailed,
    EditStateError,
    FactStoreError,
    ImportConflict,
    InvalidArgument,
    InvalidEditRequest,
    ModelAliasTaken,
    RetryLater,
    ScopeError,
    ServiceBusy,
    TokenError,
    TooManyRequests,
    UnknownEdit,
    UnknownJob,
    UnknownModel,
    UnknownRelease,
    UnknownToken,
)

log = logging.getLogger(__name__)

# (error class, HTTP status, short name); the first match wins
STATUS: tuple[tuple[type[FactStoreError], int, str], ...] = (
    (TokenError, 401, "unauthorized"),
    (ScopeError, 403, "forbidden"),
    (UnknownModel, 404, "not found"),
    (UnknownEdit, 404, "not found"),
    (UnknownJob, 404, "not found"),
    (UnknownRelease, 404, "not found"),
    (UnknownToken, 404, "not found"),
    (EditStateError, 409, "conflict"),
    (ImportConflict, 409, "conflict"),
    (ModelAliasTaken, 409, "conflict"),
    (InvalidEditRequest, 422, "invalid request"),
    (InvalidArgument, 422, "invalid request"),
    (EditFailed, 422, "edit failed"),
    (TooManyRequests, 429, "too many requests"),
    (ServiceBusy, 503, "busy"),
    (DatabaseUnavailable, 503, "database unavailable"),
    (DatabaseError, 400, "refused by the database"),
    (FactStoreError, 400, "bad request"),
)


PROBLEM = "application/problem+json"


DATABASE_DETAIL = {  # what a client learns of a database failure (the server log has the rest)
    503: "the database is unreachable; retry shortly",
    400: "the database refused the request",
}


def body(
    title: str,
    detail: str | None = None,
    status: int = 400,
    headers: dict[str, str] | None = None,
    **extensions: object,
) -> JSONResponse:
    """A problem details response; TITLE is the status table's short name (the same for every
    instance of a kind of problem), DETAIL this instance's one-line message."""
    problem: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail is not None:
        problem["detail"] = detail
    return JSONResponse({**problem, **extensions}, status_code=status, headers=headers, media_type=PROBLEM)


def _validation_detail(exc: RequestValidationError) -> list[dict]:
    """Pydantic's errors without the rejected input echoed back (it may be a megabyte, or a secret)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


def install(app: FastAPI) -> None:
    @app.exception_handler(FactStoreError)
    async def factstore_error(_request: Request, exc: FactStoreError) -> JSONResponse:
        for kind, status, name in STATUS:
            if isinstance(exc, kind):
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                detail = " ".join(str(exc).split())
                if isinstance(exc, (DatabaseUnavailable, DatabaseError)):  # names the database: the log only
                    log.warning("%s: %s", name, detail)
                    detail = DATABASE_DETAIL[status]
                if status in (429, 503):
                    headers = {"Retry-After": str(exc.retry_after if isinstance(exc, RetryLater) else 5)}
                return body(name, detail, status, headers)
        return body("bad request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_detail(exc)
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "the request"
        return body("invalid request", f"{where}: {errors[0]['msg'] if errors else 'invalid'}", 422, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return body(
            str(exc.detail).lower() if exc.detail else "error", None, exc.status_code, getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return body("internal error", f"{type(exc).__name__}; see the server log", 500)
