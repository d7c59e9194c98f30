"""Torch-free value types shared by every room."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic
from pydantic import ConfigDict, Field

from factstore.errors import InvalidEditRequest, shown

ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_alias(alias: str) -> str:
    """A model alias names folders under FACTSTORE_HOME: a plain name, refused otherwise."""
    if not ALIAS.fullmatch(alias) or ".." in alias:
        raise InvalidEditRequest(
            f"alias {shown(alias)} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return alias


DTYPES = ("float32", "bfloat16", "float16")  # what a base model may be loaded and edited in
# the longest text an edit may carry, in characters: checked here and declared by the HTTP schemas
PROMPT_CHARS, TEXT_CHARS, RELATION_CHARS, NOTE_CHARS = 4096, 1024, 64, 4096


def identity_in_dtype(revision: str, dtype: str) -> str:
    """revision for float32 (every model registered before dtypes were chosen), else revision+dtype."""
    return revision if dtype == "float32" else f"{revision}+{dtype}"


@dataclass(frozen=True)
class ModelRef:
    """A model pinned to exact weights.

    revision is a Hub commit SHA for Hub sources, and "sha256:<hex>" of the weight
    files for local folders, GGUF files and starter assets.
    """

    source: str  # what the user asked for: Hub id, path, or starter:NAME
    revision: str  # exact identity of the weights
    model_type: str  # config.model_type, the key into arch.ARCHITECTURES
    local_path: str = ""  # folder the weights were loaded from on this machine
    dtype: str = "float32"  # what the weights are loaded and edited in (one of DTYPES)

    @property
    def identity(self) -> str:
        return identity_in_dtype(self.revision, self.dtype)


@dataclass(frozen=True)
class EditRequest:
    """One fact correction: in `prompt` filled with `subject`, the model should say `target_new`."""

    prompt: str  # template with exactly one "{}", e.g. "{} is located in the city of"
    subject: str  # e.g. "The Eiffel Tower"
    target_new: str  # e.g. "Rome" (a leading space is added when tokenising)
    target_true: str | None = None  # what the model said before, when known
    relation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)
        self.validate()

    def validate(self) -> None:
        for name, value, limit in (
            ("prompt", self.prompt, PROMPT_CHARS),
            ("subject", self.subject, TEXT_CHARS),
            ("target", self.target_new, TEXT_CHARS),
            ("old target", self.target_true or "", TEXT_CHARS),
            ("relation id", self.relation_id or "", RELATION_CHARS),
        ):
            if "\x00" in value:
                raise InvalidEditRequest(f"the {name} contains a NUL byte; remove it")
            if len(value) > limit:
                raise InvalidEditRequest(f"the {name} is {len(value)} characters long; the limit is {limit}")
        if self.prompt.count("{}") != 1:
            raise InvalidEditRequest(
                f"the prompt must contain '{{}}' exactly once where the subject goes, "
                f"e.g. '{{}} is located in the city of'; got {shown(self.prompt)}"
            )
        if not self.subject.strip():
            raise InvalidEditRequest("the subject is empty: give the entity the fact is about, e.g. 'The Eiffel Tower'")
        if not self.target_new:
            raise InvalidEditRequest("the target is empty: give the new object the model should say, e.g. 'Rome'")
        if not self.prompt.replace("{}", "").strip():
            raise InvalidEditRequest("the prompt has no text besides '{}': write the relation, e.g. '{} is located in'")

    @property
    def text(self) -> str:
        """The prompt filled with the subject."""
        return self.prompt.replace("{}", self.subject)


@dataclass(frozen=True)
class BaseModel:
    """A registered base model (a row of base_models)."""

    id: int
    alias: str
    source: str
    revision: str
    model_type: str
    license: str | None
    recommended_layer: int | None
    created_at: str
    dtype: str = "float32"

    @property
    def identity(self) -> str:
        """The weights and the dtype they are edited in: what key statistics and releases are built on."""
        return identity_in_dtype(self.revision, self.dtype)


@dataclass(frozen=True)
class LayerAsk:
    """What an edit of a band asks of one layer: at KEY (the layer's down-projection input for
    the subject, float32 (d_ff,) bytes) a change TARGET (float32 (d,) bytes) of the layer's
    output, relative to the base weights."""

    layer: int
    key: bytes
    target: bytes


def band_sha256(band: tuple[LayerAsk, ...]) -> str | None:
    """One digest of an edit's per-layer vectors (None: a single-layer edit)."""
    if not band:
        return None
    digest = hashlib.sha256()
    for ask in band:
        digest.update(f"{ask.layer}:{len(ask.key)}:{len(ask.target)}:".encode() + ask.key + ask.target)
    return digest.hexdigest()


StatsHandle = TypeVar("StatsHandle", bound=Hashable, covariant=True)


@dataclass(frozen=True)
class LoggedEdit(Generic[StatsHandle]):
    """What a compile, and the checks of a pulled log, read of one edit, stored or pulled and not
    stored yet: its place in the log (seq, unique within it), its request, its vectors (float32
    little-endian bytes) and a handle on the C its update was solved with (COVARIANCE_ID, of type
    StatsHandle: what the caller's C loader takes). A StoredEdit is a LoggedEdit[int | None] (the
    store's covariance id); release/lineage.ImportedEdit a LoggedEdit[str | None] (its key
    statistics' key)."""

    seq: int
    prompt: str
    subject: str
    target_new: str
    target_true: str | None
    relation_id: str | None
    layer: int
    module: str
    key: bytes
    key_shape: tuple[int, ...]
    key_sha256: str
    value: bytes
    value_shape: tuple[int, ...]
    value_sha256: str
    hparams: dict
    covariance_id: StatsHandle
    band: tuple[LayerAsk, ...] = ()  # per-layer vectors of a band edit, lowest layer first; () single-layer

    @property
    def label(self) -> str:
        """How a message names the edit."""
        return f"edit {self.seq}"

    def request(self) -> EditRequest:
        """The request this edit was computed for."""
        return EditRequest(self.prompt, self.subject, self.target_new, self.target_true, self.relation_id)


@dataclass(frozen=True, kw_only=True)
class StoredEdit(LoggedEdit[int | None]):
    """A registered edit as read back from the store."""

    id: int
    base_model_id: int
    hparams_fingerprint: str
    status: str
    supersedes_id: int | None
    requested_by: str | None
    note: str | None
    metrics: dict
    created_at: str

    @property
    def label(self) -> str:
        return f"edit {self.id}"

    def summary(self) -> dict:
        """What `edit list --json` shows."""
        return {
            "id": self.id,
            "seq": self.seq,
            "subject": self.subject,
            "prompt": self.prompt,
            "target": self.target_new,
            "target_true": self.target_true,
            "layer": self.layer,
            "status": self.status,
        }

    def details(self) -> dict:
        """What `edit show --json` shows: everything but the raw vectors."""
        data = {k: v for k, v in self.__dict__.items() if k not in ("key", "value")}
        data["key_shape"], data["value_shape"] = list(self.key_shape), list(self.value_shape)
        return data


PROBABILITIES = ("prob_new_before", "prob_new_after", "prob_true_before", "prob_true_after")  # of an edit's metrics


class EditEntry(pydantic.BaseModel):
    """One row of a model's edit log in any state, as people, `--json` and the HTTP API see it
    (served as it is: the JSON names the target `target`, the relation `relation` and the
    replaced edit `supersedes`, and lifts the probabilities out of METRICS).

    A `pending` or `computing` request has no seq or layer yet; a `failed` one has its error.
    """

    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    id: int
    model: str  # the base model's alias
    seq: int | None
    status: str
    subject: str
    prompt: str
    target_new: str = Field(serialization_alias="target")
    target_true: str | None
    relation_id: str | None = Field(serialization_alias="relation")
    layer: int | None
    requested_layer: str | None
    requested_by: str | None
    note: str | None
    error: str | None
    supersedes_id: int | None = Field(serialization_alias="supersedes")
    metrics: dict = Field(exclude=True)
    created_at: str
    updated_at: str | None
    retracted_by: str | None = None
    retracted_at: str | None = None

    # the probabilities of the new and old target, lifted out of METRICS when the entry is made
    prob_new_before: float | None = None
    prob_new_after: float | None = None
    prob_true_before: float | None = None
    prob_true_after: float | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _lift_probabilities(cls, data: Any) -> Any:
        if isinstance(data, dict):
            metrics = data.get("metrics") or {}
            return {**{name: metrics.get(name) for name in PROBABILITIES}, **data}
        return data


@dataclass(frozen=True, slots=True)
class LogMatch:
    """Which rows of a model's log to list: a status (one of the edit states, "current" for
    active edits and the queue, or "all"), part of the subject, the requester."""

    status: str = "all"
    subject: str | None = None  # any part of it, case-insensitively
    requested_by: str | None = None


@dataclass(frozen=True)
class Job:
    """A compile, trace or publish asked for over HTTP and done by a worker."""

    id: int
    kind: str
    model: str
    params: dict
    status: str
    result: dict | None
    error: str | None
    requested_by: str | None
    files: tuple[str, ...]
    created_at: str
    updated_at: str | None
    waiting: str | None = None  # a pending job no running worker can take: why

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["files"] = list(self.files)
        return data


@dataclass(frozen=True)
class ApiTokenInfo:
    """A stored API token, without the secret."""

    name: str
    scope: str
    created_at: str
    revoked: bool


@dataclass(frozen=True)
class Covariance:
    id: int
    layer: int
    module: str
    corpus: str
    corpus_sha256: str
    tokens: int
    dtype: str
    path: str  # on the machine that wrote it; stats.local_file finds it on another
    sha256: str
    key: str = ""  # its spec's key (the cache's file name); "" until recorded


@dataclass(frozen=True)
class NewEdit:
    """A computed edit ready to be written in one short transaction."""

    request: EditRequest
    target_true: str | None
    layer: int
    module: str
    key: bytes
    key_shape: tuple[int, ...]
    value: bytes
    value_shape: tuple[int, ...]
    hparams: dict
    hparams_fingerprint: str
    covariance_id: int | None
    metrics: dict
    requested_by: str | None = None
    note: str | None = None
    band: tuple[LayerAsk, ...] = ()


@dataclass(frozen=True, slots=True)
class NewRelease:
    """A release folder written by a compile, ready to be recorded (Store.create_release)."""

    mode: str
    edit_log_sha256: str
    manifest_sha256: str
    path: str
    edit_ids: list[int]
    published: tuple[str, str, str] | None = None  # (repo, commit, tag): pulled from the Hub, already published
    scores: dict | None = None


def request_sha256(request: EditRequest) -> str:
    """Identity of a request's text, used to resume imports without duplicates."""
    blob = json.dumps([request.prompt, request.subject, request.target_new, request.relation_id], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Release:
    id: int
    base_model_id: int
    version: int
    mode: str
    edit_log_sha256: str
    manifest_sha256: str
    path: str
    hub_repo: str | None
    hub_commit: str | None
    tag: str | None
    status: str
    edit_ids: tuple[int, ...]
    created_at: str
    scores: dict | None = None  # measured at compile time; None: an older release (see its manifest)

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["edit_ids"] = list(self.edit_ids)
        data["edits"] = len(self.edit_ids)
        return data


@dataclass(frozen=True)
class Record:
    """One CounterFact case: the rewrite and the prompts it is judged on."""

    request: EditRequest  # target_true is set
    paraphrases: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    generations: tuple[str, ...] = ()
    # when given, neighbour i is judged against its own expected answer instead of target_true
    neighbour_answers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TracedFact:
    """A fact to trace: `prompt` filled with `subject`, and the answer whose recall is traced."""

    prompt: str  # template with "{}" for the subject
    subject: str
    target: str | None = None  # None: the model's own top next token


@dataclass(frozen=True)
class KnownFact:
    """A fact the model may know, for causal tracing (ROME's known_1000.json)."""

    subject: str
    template: str  # prompt with "{}" for the subject
    attribute: str  # the expected answer

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ImportedRelease:
    """A pulled release to record with the edits imported from it, in the same transaction."""

    mode: str
    version: int | None  # from its vN tag; None: the next free version
    manifest_sha256: str
    path: str
    published: tuple[str, str, str] | None  # (repo, commit, tag) when pulled from the Hub
    log_sha256: Callable[[list[StoredEdit]], str]  # identity of the active log once the edits are in
    scores: dict | None = None  # the manifest's, as the publisher measured them (shown, never trusted)
    templates: tuple[dict, ...] = ()  # the manifest's context templates ({fingerprint, seed, templates})
