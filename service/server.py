"""gRPC server factory: servicers, error/metrics interceptor, health driven by Triton, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from contract import ModelSpec
from service.colorize import ColorizePipeline, served_models
from service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PriorlabError,
    ResourceExhausted,
    Unavailable,
)
from service.gateway import ColorizerServicer
from service.metrics import Metrics
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc
from service.settings import Settings
from service.triton import InferenceBackend

log = logging.getLogger(__name__)

COLORIZER_SERVICE = colorize_pb2.DESCRIPTOR.services_by_name["Colorizer"].full_name

STATUS_CODES: dict[type[PriorlabError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: PriorlabError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place a `PriorlabError` becomes a gRPC status; anything else is INTERNAL.

    It also counts every RPC by method and final code and times it (Prometheus).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming handlers are wrapped by their servicer (Restore)
        method = details.method.rsplit("/", 1)[-1]
        behaviour = handler.unary_unary
        metrics = self._metrics

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except PriorlabError as e:
                code = status_code(e)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    context.set_trailing_metadata((("retry-after", "1"),))
                await context.abort(code, str(e))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", details.method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the gateway)")
            finally:
                metrics.handled.labels(method, code.name).inc()
                metrics.handling_seconds.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _watch_health(
    backend: InferenceBackend, servicer: health.aio.HealthServicer, models: list[ModelSpec], period_s: float
) -> None:
    """Colorizer is SERVING while Triton and every model this gateway calls are ready."""
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    while True:
        ready = all([await backend.ready(spec) for spec in models])
        status = serving if ready else not_serving
        await servicer.set(COLORIZER_SERVICE, status)
        await servicer.set("", status)
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
    ) -> None:
        self.server, self.port, self.metrics = server, port, metrics
        self._backend, self._tasks, self._health = backend, tasks, health_servicer

    async def stop(self, grace_s: float = 5.0) -> None:
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._backend.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def create_server(settings: Settings, backend: InferenceBackend) -> GatewayServer:
    """Build, bind (port 0 = free port) and start the gateway."""
    metrics = Metrics()
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]
    server = grpc.aio.server(interceptors=[ErrorInterceptor(metrics)], options=options)
    pipeline = ColorizePipeline(backend, settings, metrics)
    colorize_pb2_grpc.add_ColorizerServicer_to_server(ColorizerServicer(pipeline, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            COLORIZER_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.host)
    tasks = [
        asyncio.create_task(
            _watch_health(backend, health_servicer, served_models(settings), settings.health_poll_s)
        )
    ]
    log.info("gateway listening on %s:%d (Triton %s)", settings.host, port, settings.triton_url)
    return GatewayServer(server, port, backend, tasks, health_servicer, metrics)
