"""The gateway's exceptions: what went wrong, in terms a gRPC status can carry.

Raise these anywhere in the gateway; one interceptor maps them to status codes, so handlers hold no
try/except. Anything else that escapes is a bug: logged with its traceback, answered as INTERNAL.

The hierarchy (the gRPC code each one becomes):

* PriorlabError
  + InvalidArgument ...... INVALID_ARGUMENT    the request itself is wrong (bad image, limit passed,
  |                                            value out of range); retrying it cannot help
  + NotFound ............. NOT_FOUND           a named thing does not exist (model, job)
  + Unauthenticated ...... UNAUTHENTICATED     no valid credentials (gateway auth is on, README Security)
  + ResourceExhausted .... RESOURCE_EXHAUSTED  the server is out of capacity (queue full); retry later
  + Unavailable .......... UNAVAILABLE         a backend (Triton, Redis) cannot be reached; retry later
  + DeadlineExceeded ..... DEADLINE_EXCEEDED   the caller's deadline passed before the work finished
  + Cancelled ............ CANCELLED           the work was cancelled (a Restore job, by its owner)
  + Aborted .............. ABORTED             the work was given up (a Restore job whose workers died)
  + DataLoss ............. DATA_LOSS           state the server had is gone (a Restore job whose record
  |                                            vanished from the job bus: Redis lost it)
  + Internal ............. INTERNAL            a bug, logged where it happened (a Restore worker)

The message is sent to the client as the status details, so it names the offending value and what
would have been accepted, and never holds secrets. A value the client sent is quoted through `echo`,
which keeps its first 64 characters: a 20,000-character model name must not make the reply bigger
than the request (a status message over the peer's metadata limit reads as RESOURCE_EXHAUSTED).

`STATUS_CODES` below is the one table of these pairs: the gateway's interceptor reads it one way, the
Restore job bus (a worker's failure, a cancel) both ways. It holds the codes by name
(`grpc.StatusCode[name]`), not as `grpc.StatusCode` members, because training imports this module
through the colour maths and should not load grpc for it; the names are also what the bus carries.
"""

# The classes are named after the gRPC status codes they become, not with an "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


class PriorlabError(Exception):
    """Base class: a failure the client should hear about with a specific status code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(PriorlabError):
    """The request is malformed or outside a documented limit."""


class NotFound(PriorlabError):
    """The request names something that does not exist."""


class Unauthenticated(PriorlabError):
    """The call carries no valid credentials (a bearer token, when the gateway's auth is on)."""


class ResourceExhausted(PriorlabError):
    """The server has no capacity for this request right now; `retry_after_s` says when to try again
    (sent as `retry-after` by gRPC and HTTP alike)."""

    retry_after_s: int = 1


class Unavailable(PriorlabError):
    """A backend the request needs cannot be reached."""


class DeadlineExceeded(PriorlabError):
    """The request's deadline passed before the work was done."""


class Cancelled(PriorlabError):
    """The work was cancelled before it finished."""


class Aborted(PriorlabError):
    """The work was given up after repeated failures of the machinery, not of the request."""


class DataLoss(PriorlabError):
    """Something the server had accepted is gone: a Restore job whose record vanished from the job bus."""


class Internal(PriorlabError):
    """The server itself failed (a bug); it was logged where it happened, which the message names.

    Raised where a failure crosses a process: a Restore worker's bug reaches the gateway as this. A bug
    in the gateway itself is any other exception, which the interceptor logs and answers as INTERNAL.
    """


STATUS_CODES: Final[Mapping[type[PriorlabError], str]] = MappingProxyType(
    {
        InvalidArgument: "INVALID_ARGUMENT",
        NotFound: "NOT_FOUND",
        Unauthenticated: "UNAUTHENTICATED",
        ResourceExhausted: "RESOURCE_EXHAUSTED",
        Unavailable: "UNAVAILABLE",
        DeadlineExceeded: "DEADLINE_EXCEEDED",
        Cancelled: "CANCELLED",
        Aborted: "ABORTED",
        DataLoss: "DATA_LOSS",
        Internal: "INTERNAL",
    }
)
KINDS: Final[Mapping[str, type[PriorlabError]]] = MappingProxyType(
    {name: kind for kind, name in STATUS_CODES.items()}
)


ECHO_CHARS: Final = 64


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr` of a client's value for an error message, cut to `limit` characters.

    Longer values keep their first `limit` characters of the repr and say how long the value was:
    `'aaaa…(20000 chars)`. Messages stay bounded whatever the request held.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}…({size} chars)"


def status_name(error: PriorlabError) -> str:
    """The name of `error`'s gRPC status code: that of the nearest kind along its MRO.

    A subclass of a kind is that kind. A bare `PriorlabError` (nobody should raise one) is INTERNAL.
    """
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return STATUS_CODES[Internal]


def error_for(name: str, message: str) -> PriorlabError:
    """The exception that a status code (by name) stands for: the inverse of `status_name`.

    A code no kind owns (UNKNOWN, say, from a newer worker) becomes `Internal`: the client still hears
    that the server failed, and the message says where.
    """
    return KINDS.get(name, Internal)(message)
