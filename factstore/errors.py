"""User-facing failures. Each message says what went wrong and what to do next."""

from __future__ import annotations

SHOWN_CHARACTERS = 60  # the most of a caller's own input an error message repeats


def shown(value: object, limit: int = SHOWN_CHARACTERS) -> str:
    """VALUE quoted for an error message, cut to LIMIT characters: messages reach HTTP clients and
    logs, so they never repeat a long input whole (it may be megabytes, or a secret)."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


class FactStoreError(Exception):
    """Base of every error meant for a person; the CLI prints it on one line and exits 1."""


class InvalidEditRequest(FactStoreError):
    """An edit request that cannot be carried out as written."""


class UnknownArchitecture(InvalidEditRequest):
    pass


class ModelSourceNotFound(FactStoreError):
    pass


class InvalidArgument(FactStoreError):
    """A setting (a dtype, a device) that factstore does not know."""


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
    """A release cannot be built from the edit log as it stands."""


class NumericalError(FactStoreError):
    """A computation produced non-finite numbers (an edit's vectors, an updated weight)."""


class DatabaseError(FactStoreError):
    """The database refused a write for a reason other than a lost race (a broken reference)."""


class HubError(FactStoreError):
    """The Hub answered with an error that has no more specific class."""


class HubUnreachable(HubError):
    """No answer from the Hub endpoint (network down, wrong --endpoint)."""


class HubAuthError(HubError):
    """Missing, invalid or insufficient token."""


class HubNotFound(HubError):
    """Unknown repository, or a private one the token cannot read, or an unknown version."""


class PublishConflict(HubError):
    """Someone else published to the repository since our last release."""


class ReleaseVerificationError(FactStoreError):
    """A pulled file does not match the release manifest."""


class HubFileTooLarge(ReleaseVerificationError):
    """A repository file is larger than what belongs there can be (or the Hub did not say its size)."""


class ReleaseDegraded(FactStoreError):
    """A release's held-out perplexity rose more than FACTSTORE_MAX_PERPLEXITY_RISE allows."""


class ImportConflict(FactStoreError):
    """A release's edit log does not continue the local one."""


class UnknownRelease(FactStoreError):
    pass


class UnknownJob(FactStoreError):
    pass


class LeaseLost(FactStoreError):
    """Another worker took over a model (this one's lease expired): its result is dropped."""


class TokenError(FactStoreError):
    """No token, an unknown token or a revoked one (HTTP 401)."""


class ScopeError(FactStoreError):
    """A valid token whose scope does not allow the operation (HTTP 403)."""


class UnknownToken(FactStoreError):
    pass


class EditFailed(FactStoreError):
    """A request was computed and failed (its reason is stored with it)."""


class HeadChanged(FactStoreError):
    """The log changed while an edit was computed on the old head: it is computed again."""


class RetryLater(FactStoreError):
    """A request refused for now; RETRY_AFTER seconds is when to try again (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceBusy(RetryLater):
    """The service has no room for this request now (HTTP 503)."""


class TooManyRequests(RetryLater):
    """One client asked more often than its limit (HTTP 429)."""
