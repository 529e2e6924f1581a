"""gRPC status -> HTTP status: the standard mapping (google.rpc.Code's documented HTTP equivalents).

The HTTP API does not keep its own list of exceptions: an error's gRPC code comes from the one
`PriorlabError` -> status table (`service.errors.STATUS_CODES`, through `status_name`), and this module
only says which HTTP status each gRPC code is. So a new error kind added to that table is answered
over HTTP with no change here.
"""

from __future__ import annotations

import grpc

from service.errors import InvalidArgument, PriorlabError, ResourceExhausted, Unauthenticated, status_name

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,  # "client closed request"
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class PayloadTooLarge(InvalidArgument):
    """A request body over the gateway's message limit: INVALID_ARGUMENT, as an oversized image is over
    gRPC, but HTTP has a more precise status for it (413 Content Too Large)."""


def grpc_code(error: PriorlabError) -> grpc.StatusCode:
    """The gRPC code of `error`, from the one exception -> status table (as the gRPC interceptor)."""
    return grpc.StatusCode[status_name(error)]


def http_status(error: PriorlabError) -> int:
    if isinstance(error, PayloadTooLarge):
        return 413
    return HTTP_STATUS[grpc_code(error)]


def error_body(error: PriorlabError) -> dict[str, object]:
    """`{"error": {"code": "NOT_FOUND", "status": 404, "message": ...}}`: the gRPC status, in JSON."""
    return {"error": {"code": grpc_code(error).name, "status": http_status(error), "message": str(error)}}


def error_headers(error: PriorlabError) -> dict[str, str]:
    if isinstance(error, ResourceExhausted):
        return {"Retry-After": str(error.retry_after_s)}
    if isinstance(error, Unauthenticated):  # RFC 9110: a 401 names the scheme it wants (RFC 6750's)
        return {"WWW-Authenticate": 'Bearer realm="priorlab"'}
    return {}
