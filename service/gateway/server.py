"""gRPC server factory: servicers, error/metrics interceptor, health driven by Triton, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from contract import ModelSpec
from service.bus.jobs import JobBus
from service.bus.timing import BusTiming
from service.errors import InvalidArgument, PriorlabError, ResourceExhausted, echo, status_name
from service.gateway.admission import map_large_allocations
from service.gateway.auth import AuthInterceptor, TokenTable, reflection_pool, server_credentials
from service.gateway.colorize import ColorizePipeline, served_models
from service.gateway.colorizer import ColorizerServicer
from service.gateway.http import HttpServer, serve_http
from service.gateway.restorer import RESTORER_SERVICE, RestorerServicer
from service.gateway.settings import Settings
from service.gateway.triton import InferenceBackend
from service.metrics import Metrics
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2_grpc

log = logging.getLogger(__name__)

COLORIZER_SERVICE = colorize_pb2.DESCRIPTOR.services_by_name["Colorizer"].full_name


def status_code(error: PriorlabError) -> grpc.StatusCode:
    """The gRPC status of `error`, from the one table (`service.errors.STATUS_CODES`)."""
    return grpc.StatusCode[status_name(error)]


class _Undecodable:
    """A request whose bytes are not a valid message: the handler answers INVALID_ARGUMENT for it.

    grpcio answers a deserializer's exception with UNKNOWN before any handler runs, so the interceptor's
    deserializer hands this back instead and the wrapped handler raises `InvalidArgument`.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    parse = deserializer

    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:  # protobuf's DecodeError, or anything a parser of bytes may raise
            return _Undecodable(e)

    return lenient


def _check_decoded(request: Any, method: str) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the {method} request is not a valid protobuf message: {echo(str(request.error))}"
        )


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpcio has no stubs: Any
    """The one place a `PriorlabError` becomes a gRPC status; anything else is INTERNAL.

    Wraps unary-unary and unary-stream handlers (Restore streams). It also counts every RPC by method and
    final code and times it (Prometheus). A request whose bytes do not parse is INVALID_ARGUMENT.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def wrapped_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._handled(details.method, method, context):
                    _check_decoded(request, method)
                    return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                wrapped_unary,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._handled(details.method, method, context):
                    _check_decoded(request, method)
                    async for response in stream(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(
                wrapped_stream,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler  # client- and bidi-streaming: none in priorlab.v1

    @contextlib.asynccontextmanager
    async def _handled(
        self, full_method: str, method: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except PriorlabError as e:
            code = status_code(e)
            if isinstance(e, ResourceExhausted):
                context.set_trailing_metadata((("retry-after", str(e.retry_after_s)),))
            await context.abort(code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error in %s", full_method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the gateway)")
        finally:
            self._metrics.handled.labels(method, code.name).inc()
            self._metrics.handling_seconds.labels(method).observe(time.perf_counter() - start)


async def _watch_health(
    backend: InferenceBackend, servicer: health.aio.HealthServicer, models: list[ModelSpec], period_s: float
) -> None:
    """Colorizer is SERVING while Triton and every model this gateway calls are ready."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    while True:
        # Side by side: a hung Triton costs one probe timeout, not one per model.
        ready = all(await asyncio.gather(*(backend.ready(spec) for spec in models)))
        status = serving if ready else not_serving
        await servicer.set(COLORIZER_SERVICE, status)
        await servicer.set("", status)
        await asyncio.sleep(period_s)


async def _watch_restore_health(
    bus: JobBus, servicer: health.aio.HealthServicer, period_s: float, worker_ttl_s: float
) -> None:
    """Restorer is SERVING while Redis answers and at least one worker heartbeat is recent.

    Any failure of the check (Redis gone, loading its append-only file, not answering within the poll
    period) is NOT_SERVING, and the watcher itself never dies, so it cannot leave a stale SERVING behind.
    """
    while True:
        try:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow the cancel of stop() when it
            # races the call finishing, and the gateway then never stops (seen 1 run in 3).
            async with asyncio.timeout(max(period_s, 1.0)):
                ready = await bus.live_workers(worker_ttl_s) > 0
        except Exception as e:  # any failure is "not serving"; the loop must go on
            if not isinstance(e, PriorlabError | TimeoutError):
                log.warning("Restorer health check failed: %r", e)
            ready = False
        serving = health_pb2.HealthCheckResponse.SERVING
        await servicer.set(RESTORER_SERVICE, serving if ready else health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(period_s)


class GatewayServer:
    """A started gateway: `port`, and `stop()` that drains, flips health and closes Triton."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        backend: InferenceBackend,
        tasks: list[asyncio.Task[None]],
        health_servicer: health.aio.HealthServicer,
        metrics: Metrics,
        bus: JobBus | None = None,
    ) -> None:
        self.server, self.port, self.metrics = server, port, metrics
        self._backend, self._tasks, self._health, self._bus = backend, tasks, health_servicer, bus
        self.http: HttpServer | None = None  # the HTTP API and web page, when settings.http_port is set

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.http is not None:
            await self.http.stop()
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
        # Bounded: a watcher that swallowed its cancel must not keep the gateway from stopping.
        _, stuck = await asyncio.wait(self._tasks, timeout=STOP_TASKS_S) if self._tasks else ((), ())
        for task in stuck:
            log.error("a background task did not stop within %.0f s: %r", STOP_TASKS_S, task)
        await self._backend.close()
        if self._bus is not None:
            await self._bus.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


STOP_TASKS_S = 5.0  # how long stop() waits for the health watchers to end
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(services: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Server reflection as `grpc.reflection.v1` (what current clients ask first) and `v1alpha`.

    The pinned grpcio-reflection implements only v1alpha. The v1 protocol is the same messages under
    a new package name (same fields and numbers, so the same bytes), so the one servicer answers both.
    It describes only the public types (`auth.reflection_pool`), never the job bus's internal messages.
    """
    listed = (*services, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(listed, pool=reflection_pool(listed))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """The gRPC port: TLS (mutual with a client CA) when a certificate is set, else plaintext."""
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert:
        creds = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        return int(server.add_secure_port(address, creds))
    if settings.auth_tokens_file and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("bearer tokens over plaintext gRPC on %s: set PRIORLAB_TLS_CERT/_KEY", address)
    return int(server.add_insecure_port(address))


async def create_server(settings: Settings, backend: InferenceBackend) -> GatewayServer:
    """Build, bind (port 0 = free port) and start the gateway."""
    map_large_allocations()  # huge images' planes go back to the system when freed (admission.py)
    metrics = Metrics()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor(metrics)]
    # One table for gRPC and HTTP.
    tokens = TokenTable.load(settings.auth_tokens_file) if settings.auth_tokens_file else None
    if tokens is not None:  # after ErrorInterceptor, which counts its refusals
        interceptors.append(AuthInterceptor(tokens))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pipeline = ColorizePipeline(backend, settings, metrics)
    colorize_pb2_grpc.add_ColorizerServicer_to_server(ColorizerServicer(pipeline, settings), server)
    services = [COLORIZER_SERVICE]
    timing = BusTiming(settings.restore_visibility_timeout_s)  # a bad value fails here, before the start
    bus = JobBus.from_url(settings.redis_url) if settings.redis_url else None
    if bus is not None:
        restore_pb2_grpc.add_RestorerServicer_to_server(RestorerServicer(bus, settings), server)
        services.append(RESTORER_SERVICE)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # NOT_SERVING until the watchers' first check answers: a client asking right after start-up must
    # not hear NOT_FOUND ("no such service") for a service this gateway serves.
    for service in (*services, ""):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection_on:
        _enable_reflection((*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    port = _bind(server, settings)
    if port == 0:
        raise OSError(f"could not bind the gateway to {settings.host}:{settings.port} (is the port taken?)")
    if settings.metrics_port:
        # Before the gRPC server starts: a taken metrics port fails start-up with nothing running.
        try:
            metrics.serve(settings.metrics_port, settings.host)
        except OSError as e:
            raise OSError(f"could not serve /metrics on {settings.host}:{settings.metrics_port}: {e}") from e
    # Bound before the gRPC start too: a taken HTTP port fails start-up with nothing running.
    http = HttpServer.bind(settings.host, settings.http_port) if settings.http_port else None
    await server.start()
    tasks = [
        asyncio.create_task(
            _watch_health(backend, health_servicer, served_models(settings), settings.health_poll_s)
        )
    ]
    if bus is not None:
        # A worker is gone after three missed beats of its visibility timeout (service.bus.timing).
        restore_health = _watch_restore_health(
            bus, health_servicer, settings.health_poll_s, timing.worker_ttl_s
        )
        tasks.append(asyncio.create_task(restore_health))
    security = ("mutual TLS" if settings.tls_client_ca else "TLS") if settings.tls_cert else "plaintext"
    security += ", bearer tokens" if settings.auth_tokens_file else ", no auth"
    log.info("gateway listening on %s:%d (%s; Triton %s)", settings.host, port, security, settings.triton_url)
    gateway = GatewayServer(server, port, backend, tasks, health_servicer, metrics, bus)
    if http is not None:
        try:  # same pipeline and job bus as the gRPC servicers, in this event loop
            gateway.http = await serve_http(http, pipeline, settings, backend, bus, tokens)
        except BaseException:
            await gateway.stop(0)
            raise
    return gateway
