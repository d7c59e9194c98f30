"""Who may do what: API tokens with a scope (read < write < admin)."""

from __future__ import annotations

import re
import secrets

from factstore.domain import ApiTokenInfo
from factstore.errors import InvalidEditRequest, ScopeError, TokenError, shown
from factstore.storage.models import TOKEN_SCOPES
from factstore.storage.store import Store
from factstore.storage.tokens import token_sha256

TOKEN_PREFIX = "fst_"  # recognisable in a leaked-secret scan
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MAX_TOKEN_CHARS = 200  # longer Authorization values are refused before hashing


def check_scope(scope: str) -> str:
    if scope not in TOKEN_SCOPES:
        raise InvalidEditRequest(f"unknown scope {shown(scope)}; use one of {', '.join(TOKEN_SCOPES)}")
    return scope


def allows(granted: str, needed: str) -> bool:
    return TOKEN_SCOPES.index(granted) >= TOKEN_SCOPES.index(needed)


def create_token(store: Store, name: str, scope: str) -> tuple[ApiTokenInfo, str]:
    if not TOKEN_NAME.fullmatch(name):
        raise InvalidEditRequest(
            f"token name {shown(name)} is not allowed: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    check_scope(scope)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return store.create_token(name, scope, token_sha256(token)), token


def authenticate(store: Store, token: str | None, scope: str) -> ApiTokenInfo:
    """Never echoes the token: errors name neither the value nor how much of it matched."""
    check_scope(scope)
    if not token:
        raise TokenError(
            "this needs an API token: send `Authorization: Bearer TOKEN` (create one with `factstore token create`)"
        )
    found = store.find_token(token) if len(token) <= MAX_TOKEN_CHARS else None
    if found is None:
        raise TokenError("the API token is unknown or revoked")
    if not allows(found.scope, scope):
        raise ScopeError(f"token {found.name!r} has scope {found.scope}; this needs {scope}")
    return found
