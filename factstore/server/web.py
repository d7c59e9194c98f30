"""The HTML pages: server-rendered Jinja2, complete without JavaScript (which only refreshes
the log while requests compute). Forms carry the API token, so a cross-site form cannot write."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from factstore import api
from factstore.errors import FactStoreError
from factstore.server.errors import STATUS
from factstore.server.routes import AliasPath, IdPath, Reader, Svc
from factstore.server.service import Service

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
pages = APIRouter(include_in_schema=False)

FormText = Annotated[str, Form(max_length=4096)]


def _status(exc: FactStoreError) -> int:
    return next(code for kind, code, _ in STATUS if isinstance(exc, kind))


@pages.get("/", response_class=HTMLResponse)
def index(request: Request, svc: Svc, _who: Reader) -> Response:
    models = [svc.model_json(m) for m in api.list_models(svc.store)]
    return templates.TemplateResponse(request, "index.html", {"models": models})


PAGE_RELEASES = 50  # releases a model's page lists (each parses its manifest's scores)


def _model_page(
    request: Request, svc: Service, alias: str, error: str | None = None, form: dict | None = None, status: int = 200
) -> Response:
    model = svc.model_json(svc.store.get_base_model(alias))
    edits = [e.to_json() for e in api.list_log(svc.store, alias, limit=1000)]
    total = api.count_releases(svc.store, alias)  # the newest PAGE_RELEASES, newest first; the API pages the rest
    newest = api.list_releases(svc.store, alias, limit=PAGE_RELEASES, offset=max(0, total - PAGE_RELEASES))
    releases = [svc.release_json(r) for r in reversed(newest)]
    busy = any(e["status"] in ("pending", "computing") for e in edits)
    capacity = api.model_capacity(svc.store, alias).to_json()
    context = {
        "model": model,
        "edits": edits,
        "releases": releases,
        "releases_total": total,
        "capacity": capacity,
        "error": error,
        "form": form or {},
        "busy": busy,
    }
    return templates.TemplateResponse(request, "model.html", context, status_code=status)


@pages.get("/models/{alias}", response_class=HTMLResponse)
def model_page(request: Request, alias: AliasPath, svc: Svc, _who: Reader) -> Response:
    return _model_page(request, svc, alias)


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


@pages.get("/edits/{edit_id}", response_class=HTMLResponse)
def edit_page(request: Request, edit_id: IdPath, svc: Svc, _who: Reader) -> Response:
    entry = api.get_entry(svc.store, edit_id)
    traces = [j for j in api.list_jobs(svc.store, entry.model, "trace") if j.params.get("edit_id") == edit_id]
    pending = [j.id for j in traces if j.status in ("pending", "running")]
    return templates.TemplateResponse(
        request, "edit.html", {"e": entry.to_json(), "traces": traces, "pending_traces": pending}
    )


@pages.post("/edits/{edit_id}/trace")
def trace_form(edit_id: IdPath, svc: Svc, _who: Reader, token: Annotated[str, Form(max_length=200)]) -> Response:
    who = svc.writer(token)
    entry = api.get_entry(svc.store, edit_id)
    params = {"prompt": entry.prompt, "subject": entry.subject, "target": entry.target_true, "edit_id": edit_id}
    api.submit_job(svc.store, entry.model, "trace", params, requested_by=who.name)
    return RedirectResponse(f"/edits/{edit_id}", status_code=303)


__all__ = ["Depends", "pages"]
