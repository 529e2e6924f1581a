"""The gateway's exceptions: what went wrong, in terms a gRPC status can carry.

Raise these anywhere in the gateway; one interceptor maps them to status codes, so handlers hold no
try/except. Anything else that escapes is a bug: logged with its traceback, answered as INTERNAL.

The hierarchy (the gRPC code each one becomes):

* PriorlabError
  + InvalidArgument ...... INVALID_ARGUMENT    the request itself is wrong (bad image, limit passed,
  |                                            value out of range); retrying it cannot help
  + NotFound ............. NOT_FOUND           a named thing does not exist (model, job)
  + ResourceExhausted .... RESOURCE_EXHAUSTED  the server is out of capacity (queue full); retry later
  + Unavailable .......... UNAVAILABLE         a backend (Triton, Redis) cannot be reached; retry later
  + DeadlineExceeded ..... DEADLINE_EXCEEDED   the caller's deadline passed before the work finished
  + Cancelled ............ CANCELLED           the work was cancelled (a Restore job, by its owner)
  + Aborted .............. ABORTED             the work was given up (a Restore job whose workers died)

The message is sent to the client as the status details, so it names the offending value and what
would have been accepted, and never holds secrets.
"""

# The classes are named after the gRPC status codes they become, not with an "Error" suffix.
# ruff: noqa: N818

from __future__ import annotations


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


class ResourceExhausted(PriorlabError):
    """The server has no capacity for this request right now."""


class Unavailable(PriorlabError):
    """A backend the request needs cannot be reached."""


class DeadlineExceeded(PriorlabError):
    """The request's deadline passed before the work was done."""


class Cancelled(PriorlabError):
    """The work was cancelled before it finished."""


class Aborted(PriorlabError):
    """The work was given up after repeated failures of the machinery, not of the request."""
