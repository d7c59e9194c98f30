"""API tokens: only a token's sha256 is stored; a request's token is found by its digest."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from factstore.domain import ApiTokenInfo
from factstore.errors import InvalidEditRequest, UnknownToken, shown
from factstore.storage import convert
from factstore.storage.base import StoreBase
from factstore.storage.models import ApiToken
from factstore.storage.queue import now


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiToken) -> ApiTokenInfo:
    return ApiTokenInfo(
        name=row.name, scope=row.scope, created_at=convert.iso(row.created_at) or "", revoked=row.revoked_at is not None
    )


class TokenVerbs(StoreBase):
    def create_token(self, name: str, scope: str, digest: str) -> ApiTokenInfo:
        try:
            with self._tx() as s:
                row = ApiToken(name=name, scope=scope, token_sha256=digest)
                s.add(row)
                s.flush()
                return _info(row)
        except IntegrityError:
            raise InvalidEditRequest(
                f"a token named {name!r} exists already (names stay taken after a revoke); choose another name"
            ) from None

    def list_tokens(self) -> list[ApiTokenInfo]:
        with self._tx(write=False) as s:
            return [_info(r) for r in s.scalars(select(ApiToken).order_by(ApiToken.id))]

    def set_token_revoked(self, name: str) -> ApiTokenInfo:
        with self._tx() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None:
                raise UnknownToken(f"no token named {shown(name)}; see `factstore token list`")
            if row.revoked_at is None:
                row.revoked_at = now()
            s.flush()
            return _info(row)

    def find_token(self, token: str) -> ApiTokenInfo | None:
        """The live token whose sha256 matches, by the column's unique index. The lookup key is a
        digest of a 256-bit random secret: how long the index takes tells nothing about a guess."""
        digest = token_sha256(token)
        with self._tx(write=False) as s:
            row = s.scalars(
                select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None))
            ).one_or_none()
            return None if row is None else _info(row)
