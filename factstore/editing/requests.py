"""Submitting edit requests: checked with the tokenizer and config alone (no weights are
loaded, so a submission takes milliseconds), then stored `pending` for a worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factstore import arch
from factstore.domain import NOTE_CHARS, BaseModel, EditEntry, EditRequest
from factstore.editing.models import check_size
from factstore.errors import InvalidEditRequest, shown
from factstore.options import EditOptions
from factstore.rome.prompts import check_fits, encode_prompt, target_ids
from factstore.storage.store import Store
from factstore.weights import checkpoints

Layer = int | str | None  # a block number, "auto" (the traced layer) or None (the default)


@dataclass(frozen=True)
class ModelChecks:
    """What a submission is checked against: a model's tokenizer and shape, without weights."""

    base: BaseModel
    tokenizer: Any
    num_layers: int
    context_length: int

    @classmethod
    def load(cls, store: Store, alias: str) -> ModelChecks:
        base = store.get_base_model(alias)
        cfg = checkpoints.load_config(base.source, base.revision)
        return cls(
            base=base,
            tokenizer=checkpoints.load_tokenizer(base.source, base.revision),
            num_layers=arch.config_num_layers(cfg),
            context_length=arch.config_context_length(cfg),
        )


def layer_spec(layer: Layer) -> str | None:
    """How a requested layer is stored: "7", "auto" or None."""
    if layer is None or layer == "auto":
        return layer
    if isinstance(layer, int) and not isinstance(layer, bool):
        return str(layer)
    raise InvalidEditRequest(f"layer must be a block number or 'auto', not {shown(layer)}")


def parse_layer_spec(spec: str | None) -> Layer:
    return int(spec) if spec is not None and spec != "auto" else spec


def check_request(checks: ModelChecks, request: EditRequest, layer: Layer) -> None:
    """Everything about a request that can be refused before a model is loaded."""
    check_size(checks.tokenizer, request)
    if layer == "auto" and checks.base.recommended_layer is None:
        raise InvalidEditRequest(f"no traced layer for {checks.base.alias}; trace the model first, or give a layer")
    if isinstance(layer, int):
        arch.check_layer_count(checks.num_layers, layer)
    encoded = encode_prompt(checks.tokenizer, request.prompt, request.subject)
    check_fits(len(encoded.ids), len(target_ids(checks.tokenizer, request.target_new)), checks.context_length)


REUSED_KEY = "this Idempotency-Key was sent before with another request; use a new key for a new request"


def submit(
    store: Store,
    checks: ModelChecks,
    request: EditRequest,
    options: EditOptions = EditOptions(),
    *,
    idempotency: str | None = None,
    max_pending: int | None = None,
) -> tuple[EditEntry, bool]:
    """Check a request and store it pending (options: its layer, note and requester). Returns
    (entry, created); created is False when IDEMPOTENCY names a request already stored (that
    one is returned). MAX_PENDING: see Store.create_request."""
    layer, note = options.layer, options.note
    spec = layer_spec(layer)
    check_request(checks, request, layer)
    if note is not None and len(note) > NOTE_CHARS:
        raise InvalidEditRequest(f"the note is {len(note)} characters long; the limit is {NOTE_CHARS}")
    entry, created = store.create_request(
        checks.base.id,
        request,
        requested_layer=spec,
        note=note,
        requested_by=options.requested_by,
        idempotency=idempotency,
        max_pending=max_pending,
    )
    asked = (request.prompt, request.subject, request.target_new, request.relation_id, spec, note)
    if not created and asked != (
        entry.prompt,
        entry.subject,
        entry.target_new,
        entry.relation_id,
        entry.requested_layer,
        entry.note,
    ):
        raise InvalidEditRequest(REUSED_KEY)
    return entry, created
