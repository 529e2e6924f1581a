"""Real processes: a tritonserver (session fixture in tests/conftest.py) and gateway subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.triton_launcher import TritonServer, free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    target: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(
    triton_url: str,
    tmp: Path,
    *,
    shared_memory: bool,
    wait_serving: bool = True,
    decode_in_triton: bool = False,
) -> GatewayProcess:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PRIORLAB_PORT": str(port),
        "PRIORLAB_TRITON_URL": triton_url,
        "PRIORLAB_TRITON_SHARED_MEMORY": "1" if shared_memory else "0",
        "PRIORLAB_HEALTH_POLL_S": "0.2",
        "PRIORLAB_DECODE_IN_TRITON": "1" if decode_in_triton else "0",
    }
    log = tmp / f"gateway-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    gateway = GatewayProcess(process, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    want = health_pb2.HealthCheckResponse.SERVING if wait_serving else None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited {process.returncode}: {log.read_text()}")
        try:
            with grpc.insecure_channel(gateway.target) as channel:
                status = (
                    health_pb2_grpc.HealthStub(channel)
                    .Check(health_pb2.HealthCheckRequest(), timeout=1)
                    .status
                )
            if want is None or status == want:
                return gateway
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    gateway.stop()
    raise TimeoutError(f"gateway on {gateway.target} not serving after 60 s: {log.read_text()}")


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []
    tmp = tmp_path_factory.mktemp("gateway")

    def make(triton_url: str, **kwargs: bool) -> GatewayProcess:
        gateway = start_gateway(triton_url, tmp, **kwargs)
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(triton_server: TritonServer, gateway_factory: Callable[..., GatewayProcess]) -> GatewayProcess:
    """The make-run shape: gateway and Triton on one host, tensors through system shared memory."""
    return gateway_factory(triton_server.grpc_url, shared_memory=True)
