"""Every failure answers JSON {"error", "detail"} with a fitting status; never a traceback."""

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
    ScopeError,
    TokenError,
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
    (DatabaseUnavailable, 503, "database unavailable"),
    (DatabaseError, 400, "refused by the database"),
    (FactStoreError, 400, "bad request"),
)


def body(error: str, detail: object = None, status: int = 400, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> list[dict]:
    """Pydantic's errors without the rejected input echoed back (it may be a megabyte, or a secret)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


def install(app: FastAPI) -> None:
    @app.exception_handler(FactStoreError)
    async def factstore_error(_request: Request, exc: FactStoreError) -> JSONResponse:
        for kind, status, name in STATUS:
            if isinstance(exc, kind):
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                if status == 503:
                    headers = {"Retry-After": "5"}
                return body(name, " ".join(str(exc).split()), status, headers)
        return body("bad request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return body("invalid request", _validation_detail(exc), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return body(str(exc.detail).lower() if exc.detail else "error", None, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(exc).__name__, exc)
        return body("internal error", f"{type(exc).__name__}; see the server log", 500)

