"""The HTML pages: server-rendered Jinja2, complete without JavaScript (which only refreshes
the log while requests compute). Forms carry the API token, so a cross-site form cannot write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, StringConstraints

from factstore import api, config
from factstore.domain import PROMPT_CHARS, TEXT_CHARS, ApiTokenInfo
from factstore.errors import FactStoreError
from factstore.results import Comparison
from factstore.server.errors import STATUS
from factstore.server.routes import AliasPath, IdPath, Reader, Svc, ask_limiter
from factstore.server.schemas import LOG_STATUSES, NO_NUL
from factstore.server.service import Service

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals.update(PROMPT_CHARS=PROMPT_CHARS, TEXT_CHARS=TEXT_CHARS)  # the forms' limits are the API's
pages = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form(max_length=PROMPT_CHARS)]


def _status(exc: FactStoreError) -> int:
    return next(code for kind, code, _ in STATUS if isinstance(exc, kind))


@pages.get("/", response_class=HTMLResponse)
def index(request: Request, svc: Svc, _who: Reader) -> Response:
    models = [svc.model_json(m) for m in api.list_models(svc.store)]
    return templates.TemplateResponse(request, "index.html", {"models": models})


PAGE_RELEASES = 50  # releases a model's page lists (each parses its manifest's scores)
PAGE_EDITS = 50  # rows of the fact log per page
PAGE_JOBS = 20  # the newest jobs a model's page lists


class LogView(BaseModel):
    """The fact log's search, filters and page, from the model page's query string."""

    q: Annotated[str, StringConstraints(max_length=TEXT_CHARS, pattern=NO_NUL)] = ""  # part of the subject
    status: Annotated[str, Field(pattern="^(" + "|".join(LOG_STATUSES) + ")$")] = "all"
    who: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] = ""  # the requester
    page: Annotated[int, Field(ge=1, le=1_000_000)] = 1

    def match(self) -> api.LogMatch:
        return api.LogMatch(self.status, self.q or None, self.who or None)

    def link(self, page: int) -> str:
        """The query string of another page of the same view."""
        return urlencode({**self.model_dump(exclude_defaults=True), "page": page})


def _model_page(
    request: Request,
    svc: Service,
    alias: str,
    view: LogView | None = None,
    error: str | None = None,
    form: dict | None = None,
    status: int = 200,
) -> Response:
    view = view or LogView()
    model = svc.model_json(svc.store.get_base_model(alias))
    matching = api.count_log(svc.store, alias, view.match())
    start = (view.page - 1) * PAGE_EDITS
    edits = [e.model_dump() for e in api.list_log(svc.store, alias, view.match(), limit=PAGE_EDITS, offset=start)]
    total = api.count_releases(svc.store, alias)  # the newest PAGE_RELEASES, newest first; the API pages the rest
    newest = api.list_releases(svc.store, alias, limit=PAGE_RELEASES, offset=max(0, total - PAGE_RELEASES))
    releases = [svc.release_json(r) for r in reversed(newest)]
    jobs = [j.to_json() for j in api.list_jobs(svc.store, alias)[:PAGE_JOBS]]
    counts = model["edits"]
    context = {
        "model": model,
        "edits": edits,
        "view": view,
        "matching": matching,
        "first": start + 1,
        "page_size": PAGE_EDITS,
        "pages": max(1, -(-matching // PAGE_EDITS)),
        "statuses": LOG_STATUSES,
        "releases": releases,
        "releases_total": total,
        "jobs": jobs,
        "jobs_busy": any(j["status"] in ("pending", "running", "cancelling") for j in jobs),
        "modes": api.MODES,
        "capacity": api.model_capacity(svc.store, alias).to_json(),
        "error": error,
        "form": form or {},
        "busy": bool(counts.get("pending") or counts.get("computing")),
    }
    return templates.TemplateResponse(request, "model.html", context, status_code=status)


@pages.get("/models/{alias}", response_class=HTMLResponse)
def model_page(
    request: Request, alias: AliasPath, svc: Svc, _who: Reader, view: Annotated[LogView, Query()]
) -> Response:
    return _model_page(request, svc, alias, view)


@pages.post("/models/{alias}/edits", response_class=HTMLResponse)
def submit_form(
    request: Request,
    alias: AliasPath,
    svc: Svc,
    _who: Reader,
    prompt: FormText,
    subject: FormText,
    target: FormText,
    token: Annotated[str, Form(max_length=200)],
) -> Response:
    """The form's submission: on success to the edit's page; on a refusal, the form again with the reason."""
    form = {"prompt": prompt, "subject": subject, "target": target}
    try:
        who = svc.writer(token)
        checks = svc.checks(alias)  # an unknown model is refused (404) before the request is checked
        fact = api.EditRequest(prompt, subject, target)
        entry, _ = api.submit_edit(svc.store, alias, fact, api.EditOptions(requested_by=who.name), checks=checks)
    except FactStoreError as exc:
        if _status(exc) == 404:
            raise
        return _model_page(request, svc, alias, error=" ".join(str(exc).split()), form=form, status=_status(exc))
    return RedirectResponse(f"/edits/{entry.id}", status_code=303)


@pages.post("/models/{alias}/compile", response_class=HTMLResponse)
def compile_form(
    request: Request,
    alias: AliasPath,
    svc: Svc,
    _who: Reader,
    token: Annotated[str, Form(max_length=200)],
    mode: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Queue a compile of the current log (a job, listed on the page) for a write token."""

    def queue(who: ApiTokenInfo, limit: int) -> object:
        return api.submit_job(
            svc.store, alias, "compile", {"mode": mode or None}, requested_by=who.name, max_pending=limit
        )

    return _queued(request, svc, alias, token, queue)


@pages.post("/models/{alias}/releases/{version}/publish", response_class=HTMLResponse)
def publish_form(
    request: Request,
    alias: AliasPath,
    version: IdPath,
    svc: Svc,
    _who: Reader,
    token: Annotated[str, Form(max_length=200)],
    repo: Annotated[str, Form(max_length=200)],
) -> Response:
    """Queue publishing release VERSION to REPO, for a worker with Hub credentials of its own."""

    def queue(who: ApiTokenInfo, limit: int) -> object:
        options = api.PublishOptions(version=version)
        return api.queue_publish(svc.store, alias, repo.strip(), options, requested_by=who.name, max_pending=limit)

    return _queued(request, svc, alias, token, queue)


def _queued(
    request: Request, svc: Service, alias: str, token: str, queue: Callable[[ApiTokenInfo, int], object]
) -> Response:
    """A job queued from a form with a write token: to the page's job list, or the page again
    with the refusal (an unknown model stays a 404)."""
    try:
        queue(svc.writer(token), config.settings().max_pending_jobs)
    except FactStoreError as exc:
        if _status(exc) == 404:
            raise
        return _model_page(request, svc, alias, error=" ".join(str(exc).split()), status=_status(exc))
    return RedirectResponse(f"/models/{alias}#jobs", status_code=303)


@pages.get("/models/{alias}/ask", response_class=HTMLResponse)
async def ask_page(
    request: Request,
    alias: AliasPath,
    svc: Svc,
    who: Reader,
    prompt: Annotated[str, Query(max_length=PROMPT_CHARS)] = "",
    answers: Annotated[str, Query(max_length=TEXT_CHARS)] = "",
) -> Response:
    """The head and the base model's answers to a prompt side by side (the ask threads and
    limits of POST .../ask); ANSWERS: comma-separated objects whose probabilities to show."""
    model = await anyio.to_thread.run_sync(lambda: svc.model_json(svc.store.get_base_model(alias)))
    context: dict = {"model": model, "prompt": prompt, "answers": answers, "result": None, "error": None}
    if prompt.strip():
        try:
            context["result"] = await _compare(request, svc, who, alias, prompt, answers.split(","))
        except FactStoreError as exc:
            if _status(exc) in (404, 429, 503):
                raise
            context["error"] = " ".join(str(exc).split())
    return templates.TemplateResponse(request, "ask.html", context)


async def _compare(
    request: Request, svc: Service, who: ApiTokenInfo | None, alias: str, prompt: str, answers: list[str]
) -> Comparison:
    client = f"token {who.name}" if who is not None else f"address {request.client.host if request.client else '?'}"
    svc.ask_gate.admit(client)
    try:
        limiter = ask_limiter(request.app, svc.ask_threads)
        return await anyio.to_thread.run_sync(svc.compare, alias, prompt, answers, limiter=limiter)
    finally:
        svc.ask_gate.release(client)


def _edit_page(request: Request, svc: Service, edit_id: int, extra: dict | None = None, status: int = 200) -> Response:
    entry = api.get_entry(svc.store, edit_id)
    traces = [j for j in api.list_jobs(svc.store, entry.model, "trace") if j.params.get("edit_id") == edit_id]
    pending = [j.id for j in traces if j.status in ("pending", "running")]
    context = {"e": entry.model_dump(), "traces": traces, "pending_traces": pending, "check": None, "error": None}
    return templates.TemplateResponse(request, "edit.html", {**context, **(extra or {})}, status_code=status)


@pages.get("/edits/{edit_id}", response_class=HTMLResponse)
def edit_page(request: Request, edit_id: IdPath, svc: Svc, _who: Reader) -> Response:
    return _edit_page(request, svc, edit_id)


@pages.get("/edits/{edit_id}/check", response_class=HTMLResponse)
async def check_page(
    request: Request,
    edit_id: IdPath,
    svc: Svc,
    who: Reader,
    prompt: Annotated[str, Query(max_length=PROMPT_CHARS)] = "",
) -> Response:
    """A paraphrase or a neighbouring fact checked on the head against the base model: the
    probabilities of the edit's new and old object, and each model's own answer."""
    entry = await anyio.to_thread.run_sync(api.get_entry, svc.store, edit_id)  # the store is synchronous
    text = prompt.strip() or entry.prompt.replace("{}", entry.subject)
    answers = [entry.target_new, *([entry.target_true] if entry.target_true else [])]
    try:
        extra: dict = {"check": await _compare(request, svc, who, entry.model, text, answers), "asked": text}
        status = 200
    except FactStoreError as exc:
        if _status(exc) in (404, 429, 503):
            raise
        extra, status = {"error": " ".join(str(exc).split()), "asked": text}, _status(exc)
    return await anyio.to_thread.run_sync(lambda: _edit_page(request, svc, edit_id, extra, status))


@pages.post("/edits/{edit_id}/retract", response_class=HTMLResponse)
def retract_form(
    request: Request, edit_id: IdPath, svc: Svc, _who: Reader, token: Annotated[str, Form(max_length=200)]
) -> Response:
    """Retract an active edit: its requester's write token, or an admin token for anyone's."""
    try:
        api.retract_edit(svc.store, edit_id, svc.writer(token))
    except FactStoreError as exc:
        if _status(exc) == 404:
            raise
        return _edit_page(request, svc, edit_id, {"error": " ".join(str(exc).split())}, _status(exc))
    return RedirectResponse(f"/edits/{edit_id}", status_code=303)


@pages.post("/edits/{edit_id}/trace")
def trace_form(edit_id: IdPath, svc: Svc, _who: Reader, token: Annotated[str, Form(max_length=200)]) -> Response:
    who = svc.writer(token)
    entry = api.get_entry(svc.store, edit_id)
    params = {"prompt": entry.prompt, "subject": entry.subject, "target": entry.target_true, "edit_id": edit_id}
    api.submit_job(svc.store, entry.model, "trace", params, requested_by=who.name)
    return RedirectResponse(f"/edits/{edit_id}", status_code=303)


__all__ = ["Depends", "pages"]
