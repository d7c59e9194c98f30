"""Request and response bodies of the HTTP API (they make /openapi.json). Extra fields are refused."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from factstore.api import EDIT_STATUSES
from factstore.domain import NOTE_CHARS, PROMPT_CHARS, RELATION_CHARS, TEXT_CHARS

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refused here, not as a database error
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=PROMPT_CHARS, pattern=NO_NUL)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=TEXT_CHARS, pattern=NO_NUL)]
Note = Annotated[str, StringConstraints(max_length=NOTE_CHARS, pattern=NO_NUL)]
Relation = Annotated[str, StringConstraints(min_length=1, max_length=RELATION_CHARS, pattern=NO_NUL)]
Layer = Annotated[int, Field(ge=0, le=10_000, strict=True)]  # "layer": true is not layer 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditIn(_Strict):
    prompt: Prompt = Field(
        description="Template with {} where the subject goes.", examples=["{} is located in the city of"]
    )
    subject: Text = Field(examples=["The Eiffel Tower"])
    target: Text = Field(examples=["Rome"])
    layer: Layer | None = None
    relation: Relation | None = None
    note: Note | None = None


class AskIn(_Strict):
    prompt: Prompt
    top: Annotated[int, Field(ge=1, le=100)] = 5


class CompileIn(_Strict):
    mode: Annotated[str, StringConstraints(pattern=r"^(joint|sequential|spread|null-space|soft|band)$")] | None = None


class PublishIn(_Strict):
    repo: Annotated[str, StringConstraints(max_length=200)]
    private: bool = False
    with_stats: bool = False
    allow_degraded: bool = False


LOG_STATUSES = (*EDIT_STATUSES, "current", "all")


class LogQuery(BaseModel):
    """The query of a page of a model's log (GET .../edits)."""

    status: Annotated[str, Field(pattern="^(" + "|".join(LOG_STATUSES) + ")$")] = "all"
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    offset: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    subject: Annotated[str, StringConstraints(max_length=TEXT_CHARS, pattern=NO_NUL)] | None = None  # any part
    requested_by: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] | None = None


class StatsIn(_Strict):
    layers: Annotated[list[Annotated[int, Field(ge=0, le=999, strict=True)]], Field(min_length=1, max_length=1000)]
    jobs: Annotated[int, Field(ge=1, le=64, strict=True)] = 2
    corpus: Annotated[str, StringConstraints(max_length=200)] = "starter:wiki-vital"
    tokens: Annotated[int, Field(ge=1, le=1_000_000_000, strict=True)] | None = None


class TraceIn(_Strict):
    prompt: Prompt
    subject: Text
    target: Text | None = None
    edit_id: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    samples: Annotated[int, Field(ge=1, le=10_000, strict=True)] = 10  # FACTSTORE_TRACE_MAX_SAMPLES decides


class ErrorOut(BaseModel):
    """RFC 9457 problem details, served as application/problem+json."""

    type: str = "about:blank"
    title: str  # the status table's short name: the same for every problem of its kind
    status: int
    detail: str | None = None  # this problem, in one line
    errors: list[dict[str, Any]] | None = None  # request validation: where and why, never the input


class ModelOut(BaseModel):
    alias: str
    source: str
    revision: str
    model_type: str
    license: str | None
    recommended_layer: int | None
    created_at: str
    edits: dict[str, int] = {}


class ReleaseOut(BaseModel):
    version: int
    mode: str
    status: str
    edits: int
    edit_ids: list[int]
    edit_log_sha256: str
    manifest_sha256: str
    hub_repo: str | None
    hub_commit: str | None
    tag: str | None
    hub_url: str | None
    scores: dict[str, float | int | dict[str, float | int | str | None] | None]  # "health": its own numbers
    created_at: str


class JobOut(BaseModel):
    id: int
    kind: str
    model: str
    params: dict[str, Any]
    status: str
    result: dict[str, Any] | None
    error: str | None
    requested_by: str | None
    files: list[str]
    created_at: str
    updated_at: str | None
    waiting: str | None = None


class HealthOut(BaseModel):
    status: str
    database: str | None = None
    schema_current: str | None = None
    schema_head: str | None = None
    workers: int | None = None
    detail: str | None = None
