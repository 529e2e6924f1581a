"""Gateway security: TLS credentials, per-client bearer tokens, opaque worker labels, public reflection.

All of it is off by default (`make run` on loopback); README "Security" gives the production settings.

**Bearer tokens.** `PRIORLAB_AUTH_TOKENS_FILE` names a text file of `client-id token` lines::

    # comments and blank lines are ignored
    photo-app   3q2u1Yb0mZ7yVtLw9kPq4xR8
    batch-jobs  Jx7dK0pQ2vN5sL8wE1rT6yU3
    batch-jobs  c9F2hM4nB7vX1zQ8kW3eR6tY   # a second token for the same client: rotation

A client id is the Restore quota key and the owner of its jobs; a token is at least 16 printable ASCII
characters without spaces (`python -c "import secrets; print(secrets.token_urlsafe(24))"`), and appears
once. The file is read at start-up: restart the gateway to change it. Keep it readable by the gateway
only (a warning is logged otherwise). A call then carries `authorization: Bearer <token>`; `AuthInterceptor`
refuses anything else with UNAUTHENTICATED before any servicer runs, except the health service
(`grpc.health.v1.Health`), which stays open for load balancers and orchestrators. The presented token is
hashed and compared with every known token's hash in constant time (`hmac.compare_digest`, no early exit).
The servicers read the caller's id from `authenticated_client()` (a context variable the interceptor sets
for the call), never from metadata. With auth off it is None and the Restorer keeps its self-asserted
`x-client-id` (else the peer host): for trusted networks only.

**HTTP.** The HTTP API (`service/gateway/http.py`, `BearerAuth`) checks the same table, built once by
the server, for `Authorization: Bearer <token>` (`client_of_header`, the one parser: `bearer_token`), and
sets the same context variable; its port has the gRPC port's TLS files (`http_ssl_context`).

**Worker labels.** Clients see `worker_label(name, key)` (an HMAC, "worker-1a2b3c4d5e6f") where the job bus
carries the worker's name (by default HOST-PID); the gateway logs the name beside the label.

**Reflection.** grpcio's reflection servicer answers for any file of the pool it is given, by name or by
any symbol in it. `reflection_pool` gives it a pool of the listed services' files cut down to the types
their methods reach, so the job bus's internal messages (`RestoreJob`, `JobEvent`, `JobFailure`, which
share restore.proto with the public API) are not listed.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import secrets
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor

from service.errors import Unauthenticated, status_name

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
OPEN_SERVICES = ("grpc.health.v1.Health",)  # answered without credentials
MIN_TOKEN_CHARS = 16
# The refusal's message, over gRPC (UNAUTHENTICATED) and HTTP (401) alike.
UNAUTHENTICATED_MESSAGE = "this call needs `authorization: Bearer <token>` with a valid token"

_client: contextvars.ContextVar[str | None] = contextvars.ContextVar("priorlab_client", default=None)


def authenticated_client() -> str | None:
    """The client id of the current call's bearer token; None when auth is off (or outside a call)."""
    return _client.get()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Token -> client id, looked up in constant time (every entry compared, fixed-length digests)."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._entries: list[tuple[bytes, str]] = []
        seen: set[bytes] = set()
        for client, token in entries:
            if not client or any(c.isspace() for c in client):
                raise ValueError(f"client id {client!r} must be non-empty, without spaces")
            if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
                raise ValueError(
                    f"the token of client {client!r} must be at least {MIN_TOKEN_CHARS} printable ASCII "
                    "characters without spaces"
                )
            digest = _digest(token)
            if digest in seen:
                raise ValueError(f"a token of client {client!r} is listed twice: tokens must be unique")
            seen.add(digest)
            self._entries.append((digest, client))
        if not self._entries:
            raise ValueError("no tokens: with an empty token file no call could be made")

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        """Reads `client-id token` lines; ValueError names the file and line of a bad one."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")  # OSError: a missing file fails start-up
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected `client-id token`, got {len(fields)} fields")
            entries.append((fields[0], fields[1]))
        try:
            return cls(entries)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @property
    def clients(self) -> set[str]:
        return {client for _, client in self._entries}

    def client_for(self, token: str) -> str | None:
        presented = _digest(token)
        found = None
        for digest, client in self._entries:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(presented, digest):
                found = client
        return found

    def client_of(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """The client of the call's `authorization: Bearer <token>`, else None."""
        for key, value in metadata or ():
            token = bearer_token(value) if key == AUTHORIZATION_KEY else None
            if token is not None:
                return self.client_for(token)
        return None

    def client_of_header(self, value: str | None) -> str | None:
        """The client of an HTTP `Authorization: Bearer <token>` header's value, else None."""
        token = bearer_token(value) if value is not None else None
        return None if token is None else self.client_for(token)


def bearer_token(value: str | bytes) -> str | None:
    """The token of a `Bearer <token>` value (the scheme in any case), else None."""
    text = value if isinstance(value, str) else value.decode(errors="replace")
    scheme, _, token = text.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _service(method: str) -> str:
    return method.lstrip("/").split("/", 1)[0]


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind that answers UNAUTHENTICATED (the errors table's code)."""
    code = grpc.StatusCode[status_name(Unauthenticated(message))]

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover  (abort raises): this makes it an async generator

    return _rebuild(handler, refuse, refuse_stream)


def _rebuild(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    streaming: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour replaced: `unary` for a unary response, `streaming` for a stream."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming, **codecs)


def _as_client(handler: grpc.RpcMethodHandler, client: str) -> grpc.RpcMethodHandler:
    """`handler`, run with `authenticated_client()` = `client` (set in the call's own task)."""
    inner = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _client.set(client)
        return await inner(request, context)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _client.set(client)
        result = inner(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:  # a handler that writes with context.write and returns None
            await result

    return _rebuild(handler, unary, streaming)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio has no stubs: Any
    """Bearer-token authentication: registered after `ErrorInterceptor`, which counts its refusals.

    A call to anything but the health service needs a known token; the servicer then runs with
    `authenticated_client()` set to the token's client id.
    """

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or _service(details.method) in OPEN_SERVICES:
            return handler
        client = self._tokens.client_of(details.invocation_metadata)
        if client is None:
            return _refusal(handler, UNAUTHENTICATED_MESSAGE)
        return _as_client(handler, client)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"could not read the {what} {path}: {e}") from e


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    """TLS with `cert` (PEM chain) and `key`; with `client_ca`, clients must show a certificate it signed."""
    chain, private = _read(cert, "TLS certificate"), _read(key, "TLS key")
    ca = _read(client_ca, "client CA bundle") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


# TLS 1.2's forward-secret AEAD suites only, as gRPC's defaults (TLS 1.3's are all of that kind).
HTTP_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def http_ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """The HTTP port's TLS, from the same files as `server_credentials`: TLS 1.2 or later only; with
    `client_ca`, a client must show a certificate it signed (refused at the handshake, as over gRPC)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(HTTP_TLS_CIPHERS)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise OSError(f"could not load the TLS certificate {cert} with the key {key}: {e}") from e
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise OSError(f"could not read the client CA bundle {client_ca}: {e}") from e
    return context


PROCESS_LABEL_KEY = secrets.token_bytes(32)  # the worker-label key when none is configured


def label_key(configured: str) -> bytes:
    """The worker-label key: the configured one, else this process's random one."""
    return configured.encode() if configured else PROCESS_LABEL_KEY


def worker_label(name: str, key: bytes) -> str:
    """An opaque, stable label for the worker `name` ("" stays ""): HMAC-SHA256, 48 bits shown."""
    if not name:
        return ""
    return "worker-" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:12]


def _reachable(files: Iterable[FileDescriptor], services: set[str]) -> set[str]:
    """Full names of the message and enum types the methods of `services` reach, transitively."""
    todo: list[Descriptor] = []
    for file in files:
        for service in file.services_by_name.values():
            if service.full_name in services:
                for method in service.methods:
                    todo += [method.input_type, method.output_type]
    seen: set[str] = set()
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        for field in message.fields:
            if field.message_type is not None:
                todo.append(field.message_type)
            if field.enum_type is not None:
                seen.add(field.enum_type.full_name)
        todo += message.nested_types
    return seen


def reflection_pool(services: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A descriptor pool of the files that define `services` and their imports, where each file that
    defines one of `services` keeps only the top-level types the services' methods reach."""
    names = set(services)
    default = descriptor_pool.Default()
    roots = []
    for name in sorted(names):
        try:
            roots.append(default.FindServiceByName(name).file)
        except KeyError:  # served by a generic handler only (reflection v1): nothing to describe
            continue
    reachable = _reachable(roots, names)
    root_names = {file.name for file in roots}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if file.name in root_names:
            prefix = f"{proto.package}." if proto.package else ""
            kept = [m for m in proto.message_type if prefix + m.name in reachable]
            enums = [e for e in proto.enum_type if prefix + e.name in reachable]
            services_kept = [s for s in proto.service if prefix + s.name in names]
            del proto.message_type[:], proto.enum_type[:], proto.service[:]
            proto.message_type.extend(kept)
            proto.enum_type.extend(enums)
            proto.service.extend(services_kept)
        pool.Add(proto)
        added.add(file.name)

    for file in roots:
        add(file)
    return pool


@contextlib.contextmanager
def as_client(client: str | None) -> Any:
    """Runs the block with `authenticated_client()` = `client` (tests, and HTTP front ends)."""
    token = _client.set(client)
    try:
        yield
    finally:
        _client.reset(token)
