"""Start a gateway process (`python -m service.gateway`, configured by `PRIORLAB_*`) and wait for its health.

`make run` runs the gateway inside the stack's own process; this is for the benchmarks and the
integration tests, which start gateways of several configurations against one Triton.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.launch.process import ManagedProcess, free_port

READY_TIMEOUT_S = 60.0


@dataclass
class GatewayProcess:
    handle: ManagedProcess
    target: str

    @property
    def pid(self) -> int:
        return self.handle.pid

    def health(self, service: str = "") -> int:
        """The health status of `service` ("" = the whole gateway); grpc.RpcError if it does not answer."""
        with grpc.insecure_channel(self.target) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status)

    def stop(self) -> None:
        self.handle.stop()


def start_gateway(
    settings: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "gateway",
    cwd: Path | None = None,
    wait_for: str | None = "",
    serving: bool = True,
) -> GatewayProcess:
    """A gateway on a free port with `PRIORLAB_<KEY>` = value for each of `settings`.

    Waits until health for `wait_for` answers (None: does not wait), and is SERVING if `serving`.
    """
    port = free_port()
    env = {
        **os.environ,
        **{f"PRIORLAB_{k.upper()}": v for k, v in settings.items()},
        "PRIORLAB_PORT": str(port),
    }
    handle = ManagedProcess.spawn(
        name, [sys.executable, "-m", "service.gateway"], log_dir / f"{name}-{port}.log", env=env, cwd=cwd
    )
    gateway = GatewayProcess(handle, f"127.0.0.1:{port}")
    if wait_for is None:
        return gateway

    def ready() -> bool:
        try:
            status = gateway.health(wait_for)
        except grpc.RpcError:
            return False
        return not serving or status == health_pb2.HealthCheckResponse.SERVING

    try:
        handle.wait_until(ready, READY_TIMEOUT_S, poll_s=0.2)
    except BaseException:
        gateway.stop()
        raise
    return gateway
