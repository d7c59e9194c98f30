"""User-facing failures. Each message says what went wrong and what to do next."""

from __future__ import annotations


class FactStoreError(Exception):
    """Base of every error meant for a person; the CLI prints it on one line and exits 1."""


class InvalidEditRequest(FactStoreError):
    """An edit request that cannot be carried out as written."""


class UnknownArchitecture(InvalidEditRequest):
    pass


class ModelSourceNotFound(FactStoreError):
    pass


class IdentityMismatch(FactStoreError):
    """The weights found for a reference are not the ones pinned for it."""


class AssetError(FactStoreError):
    pass


class UnknownModel(FactStoreError):
    pass


class ModelAliasTaken(FactStoreError):
    pass


class UnknownEdit(FactStoreError):
    pass


class EditStateError(FactStoreError):
    pass


class ImportFileError(FactStoreError):
    pass


class DatabaseUnavailable(FactStoreError):
    pass


class SchemaOutOfDate(FactStoreError):
    pass


class StatisticsError(FactStoreError):
    pass


class CompileError(FactStoreError):
    pass
