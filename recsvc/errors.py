"""recsvc's one exception tree.

The domain raises these; ``recsvc.api.status`` maps each to a gRPC status code in one table, and
the command line prints their message. Messages name the offending field first.
"""

from __future__ import annotations


class RecsvcError(Exception):
    """Base of every error recsvc raises on purpose."""


class InvalidArgument(RecsvcError):
    """A request field has a bad value. ``field`` is the field's name as the caller wrote it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(RecsvcError):
    """A request names something that does not exist (e.g. an unknown item)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class FailedPrecondition(RecsvcError):
    """The request is valid but the system is not in a state to answer it."""


class Unavailable(RecsvcError):
    """No model is loaded yet, or a needed backend is down; the caller may retry."""


class StoreUnavailable(Unavailable):
    """A storage backend (Redis, the event log) did not answer in time or refused."""


class OutcomeUnknown(StoreUnavailable):
    """A write may have happened although it did not answer (a timeout after it was sent):
    retrying it with the same idempotency keys (event_ids) is safe."""


class Unauthenticated(RecsvcError):
    """The call carries no valid credentials (a missing or unknown bearer token)."""


class PermissionDenied(RecsvcError):
    """The caller is authenticated but its token lacks the scope the call needs."""


class ResourceExhausted(RecsvcError):
    """A limit on concurrent work is reached (e.g. queued image calls); the caller may retry
    later. Answered at once rather than queued, so that load cannot grow without bound."""


class NotImplementedYet(RecsvcError):
    """A part of the API that this version does not implement."""


class ConfigError(RecsvcError):
    """Settings or a config file are invalid."""


class DataError(RecsvcError):
    """Input data (an interactions or catalogue file) is unreadable, malformed or empty."""


class ArtifactError(RecsvcError):
    """A model artefact is missing, incomplete, corrupted or of an unknown schema."""
