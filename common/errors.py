"""edged's exception tree.

Every error that may reach a client is an :class:`EdgedError`. Its message is
written for a person and must never contain a file-system path outside the
user's own store. Library exceptions are translated at the boundary where they
occur (``raise SomeEdgedError(...) from exc``); :mod:`edged.daemon.grpc_codes`
holds the one table that maps these classes to gRPC status codes.
"""

from __future__ import annotations


class EdgedError(Exception):
    """Base class. ``str(err)`` is the client-facing message."""


class InvalidArgument(EdgedError):
    """The request itself is wrong (bad value, malformed name or digest)."""


class NotFound(EdgedError):
    """A named model, session or file does not exist."""


class ModelNotFound(NotFound):
    pass


class SessionNotFound(NotFound):
    pass


class AlreadyExists(EdgedError):
    pass


class FailedPrecondition(EdgedError):
    """The request is well-formed but the system is not in a state to run it."""


class InvalidModelFile(FailedPrecondition):
    """A model file is malformed, truncated or unsupported."""


class InvalidModelHeader(InvalidModelFile, InvalidArgument):
    """A model file failed edged's own header check (the GGUF reader) before any
    backend saw it: the file given is wrong, so this maps to INVALID_ARGUMENT."""


class DigestMismatch(FailedPrecondition):
    """Downloaded or imported bytes do not hash to the expected digest."""


class ResourceExhausted(EdgedError):
    """A bounded resource is full: queue, context window, disk."""


class QueueFull(ResourceExhausted):
    pass


class ContextOverflow(ResourceExhausted):
    pass


class Unavailable(EdgedError):
    """Transient: the worker crashed, the daemon is shutting down."""


class WorkerCrashed(Unavailable):
    pass


class DeadlineExceeded(EdgedError):
    pass


class Cancelled(EdgedError):
    pass


class Unauthenticated(EdgedError):
    pass


class PermissionDenied(EdgedError):
    """Authenticated, but not allowed (a hub token without access to a gated repo)."""


class Internal(EdgedError):
    """A bug or an unexpected library failure; details go to the log only."""


def from_name(name: str, message: str) -> EdgedError:
    """Rebuild an error sent by class name across a process boundary (the
    worker pipe); an unknown name becomes :class:`Internal`."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, EdgedError):
        return cls(message)
    return Internal(message)
