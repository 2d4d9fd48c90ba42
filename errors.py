"""The one exception root of vigil and its typed leaves."""

from __future__ import annotations

from vigil.schemas.errors import ErrorCode, ErrorReply

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "IntegrityError",
    "InternalError",
    "InvalidArgument",
    "PermissionDenied",
    "RequestError",
    "ResourceExhausted",
    "Unavailable",
    "VigilError",
    "error_from_reply",
]


class VigilError(Exception):
    """Root of every error vigil raises on purpose."""


class ConfigError(VigilError):
    """A launch file or configuration is invalid; names the file and the `$.path`."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}" + (f" - at `{path}`" if path else ""))
        self.source = source
        self.path = path
        self.reason = reason


class IntegrityError(VigilError):
    """Stored bytes do not match their digest or signature."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class RequestError(VigilError):
    """A request ended with a typed error instead of a result.

    `traceparent` is the W3C trace the pipeline answered in (the request's trace id), empty for
    an error the client made itself.
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, reply: ErrorReply, traceparent: str = "") -> None:
        detail = f" ({reply.field}: {reply.rule})" if reply.field or reply.rule else ""
        super().__init__(f"{reply.code}: {reply.message}{detail}")
        self.reply = reply
        self.traceparent = traceparent


class InvalidArgument(RequestError):
    """The request broke a validation rule; `reply.field` and `reply.rule` say which."""

    code = ErrorCode.INVALID_ARGUMENT


class DeadlineExceeded(RequestError):
    """The request's deadline passed before a result."""

    code = ErrorCode.DEADLINE_EXCEEDED


class Unavailable(RequestError):
    """No worker could serve the request (none up, or the degraded policy refused it)."""

    code = ErrorCode.UNAVAILABLE


class ResourceExhausted(RequestError):
    """The rate limiter refused the request; `reply.retry_after_ms` says when to retry."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class PermissionDenied(RequestError):
    """The request claimed a tenant or a priority its authenticated peer may not use."""

    code = ErrorCode.PERMISSION_DENIED


class InternalError(RequestError):
    """The pipeline failed on a valid request."""

    code = ErrorCode.INTERNAL


_LEAVES: dict[ErrorCode, type[RequestError]] = {
    leaf.code: leaf
    for leaf in (
        InvalidArgument,
        DeadlineExceeded,
        Unavailable,
        ResourceExhausted,
        PermissionDenied,
        InternalError,
    )
}


def error_from_reply(reply: ErrorReply, traceparent: str = "") -> RequestError:
    """The exception leaf that matches a wire error code one-to-one."""
    return _LEAVES[reply.code](reply, traceparent)
