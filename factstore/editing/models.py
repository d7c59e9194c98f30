"""Registering base models: a reference pinned to exact weights under an alias."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from factstore import config
from factstore.domain import BaseModel, EditRequest, check_alias
from factstore.errors import InvalidEditRequest
from factstore.progress import SILENT, Reporter
from factstore.rome.prompts import check_token_limits
from factstore.storage.store import Store
from factstore.weights import assets, checkpoints


def register_model(
    store: Store,
    alias: str,
    source: str,
    revision: str | None = None,
    *,
    dtype: str | None = None,
    progress: Reporter = SILENT,
) -> tuple[BaseModel, bool]:
    """Pin SOURCE (Hub id, folder, .gguf, starter:NAME) to exact weights under ALIAS, loaded and
    edited in DTYPE (None or "auto": the dtype its config declares). Returns (model, created)."""
    check_alias(alias)  # before anything is downloaded
    if dtype not in (None, "auto"):
        checkpoints.check_dtype(dtype)
    ref = checkpoints.resolve(source, revision, progress)
    if dtype in (
        None,
        "auto",
    ):  # the checkpoint's own; re-adding an alias keeps what it holds (float32 for aliases older than dtypes)
        known = {m.alias: m for m in store.list_base_models()}.get(alias)
        dtype = (
            known.dtype
            if known is not None and known.revision == ref.revision
            else checkpoints.checkpoint_dtype(Path(ref.local_path))
        )
    ref = replace(ref, dtype=dtype)
    license = assets.starter(source).license if source.startswith(assets.PREFIX) else None
    return store.create_base_model(alias, ref, license=license)


def tokenizer_for(store: Store, alias: str) -> Any:
    """The tokenizer of a registered model, without loading its weights."""
    base = store.get_base_model(alias)
    return checkpoints.load_tokenizer(base.source, base.revision)


def check_size(tokenizer: Any, request: EditRequest) -> None:
    """Refuse requests longer than the caps (FACTSTORE_MAX_PROMPT_TOKENS / _TARGET_TOKENS)."""
    check_token_limits(
        tokenizer, request.text, request.target_new, config.max_prompt_tokens(), config.max_target_tokens()
    )


def check_trace_size(tokenizer: Any, prompt: str) -> None:
    """Refuse a trace job's prompt (filled) longer than FACTSTORE_TRACE_MAX_TOKENS: a trace runs
    about 3 x samples x layers x tokens passes of the whole prompt."""
    n, most = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]), config.settings().trace_max_tokens
    if n > most:
        raise InvalidEditRequest(
            f"a trace job's prompt may be {most} tokens long (FACTSTORE_TRACE_MAX_TOKENS), not {n}"
        )


def check_prompt_size(tokenizer: Any, prompt: str) -> None:
    check_token_limits(tokenizer, prompt, None, config.max_prompt_tokens(), config.max_target_tokens())
