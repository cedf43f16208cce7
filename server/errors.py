"""One exception tree for the server and the one table that maps it to gRPC codes.

The engine and the dispatch layer raise these; the gRPC adapters (unary and streaming
alike, server.grpc.calls) map them with :func:`grpc_status_for`, and the metrics count
them by :func:`status_name`. Anything not in the tree becomes INTERNAL with a
generic message: details go to the log, never to the caller.
"""

from __future__ import annotations

import grpc


class IrecError(Exception):
    """Base of every error the server reports to callers."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(IrecError):
    """A request field is malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(IrecError):
    """Something the request names does not exist in the loaded bundle."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(IrecError):
    """Not ready or draining; the caller may retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE


class Overloaded(IrecError):
    """The request queue is full; the caller should back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(IrecError):
    """The caller's deadline passed before the work was done; no further work is spent."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class BundleError(IrecError):
    """A bundle is missing, corrupt or inconsistent; it is refused before it is served."""

    code = grpc.StatusCode.FAILED_PRECONDITION


INTERNAL_MESSAGE = "internal error; see the server log"


def grpc_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, caller-facing message) for any exception raised while serving."""
    if isinstance(exc, IrecError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def status_name(exc: BaseException) -> str:
    """The status code's name (e.g. "INVALID_ARGUMENT") for any exception raised while serving."""
    return grpc_status_for(exc)[0].name
