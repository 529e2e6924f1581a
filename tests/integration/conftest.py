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


# --- Restore: a real redis-server, real worker processes, a real gateway with PRIORLAB_REDIS_URL ---

RESTORER_SERVICE = "priorlab.v1.Restorer"


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    name: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_worker(redis_url: str, tmp: Path, name: str, *, visibility_s: float = 2.0) -> WorkerProcess:
    """A worker process with one CPU slot and one torch thread (`wait_joined` waits for it)."""
    log = tmp / f"worker-{name}.log"
    args = [sys.executable, "-m", "service.restore.worker", "--redis", redis_url, "--name", name]
    args += ["--visibility-timeout", str(visibility_s), "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return WorkerProcess(process, name, log)


def wait_joined(redis_url: str, worker: WorkerProcess) -> WorkerProcess:
    """Returns once the worker's first heartbeat is on the bus (torch imported, groups created)."""
    import redis

    process, name, log = worker.process, worker.name, worker.log
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited {process.returncode}: {log.read_text()}")
            if client.zscore("restore:workers", name) is not None:
                return worker
            time.sleep(0.2)
    finally:
        client.close()
    worker.stop()
    raise TimeoutError(f"worker {name} did not join the bus in 90 s: {log.read_text()}")


def start_restore_gateway(redis_url: str, tmp: Path, **settings: str) -> GatewayProcess:
    """The gateway process with the Restorer on; no Triton (Colorize reports NOT_SERVING, unused here)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PRIORLAB_PORT": str(port),
        "PRIORLAB_TRITON_URL": f"127.0.0.1:{free_port()}",
        "PRIORLAB_HEALTH_POLL_S": "0.2",
        "PRIORLAB_REDIS_URL": redis_url,
        **{f"PRIORLAB_{key.upper()}": value for key, value in settings.items()},
    }
    log = tmp / f"restore-gateway-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    gateway = GatewayProcess(process, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited {process.returncode}: {log.read_text()}")
        try:
            with grpc.insecure_channel(gateway.target) as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=RESTORER_SERVICE), timeout=1
                )
            return gateway
        except grpc.RpcError:
            time.sleep(0.2)
    gateway.stop()
    raise TimeoutError(f"gateway on {gateway.target} not answering after 60 s: {log.read_text()}")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real redis-server (Debian package) on a free 127.0.0.1 port, no persistence; stopped by PID."""
    from service.redis_server import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@dataclass
class RestoreStack:
    redis_url: str
    gateway: GatewayProcess
    workers: dict[str, WorkerProcess]

    @property
    def target(self) -> str:
        return self.gateway.target


@pytest.fixture(scope="module")
def restore_stack(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestoreStack]:
    """Redis + two workers (w1, w2; 2 s visibility timeout) + the gateway with small Restore limits."""
    url = redis_server.url  # type: ignore[attr-defined]
    tmp = tmp_path_factory.mktemp("restore")
    workers: dict[str, WorkerProcess] = {}
    gateway = None
    try:
        for name in ("w1", "w2"):
            workers[name] = spawn_worker(url, tmp, name)
        for worker in workers.values():
            wait_joined(url, worker)
        gateway = start_restore_gateway(
            url, tmp, restore_max_queue="4", restore_max_jobs_per_client="3", restore_max_attempts="2"
        )
        yield RestoreStack(url, gateway, workers)
    finally:
        if gateway is not None:
            gateway.stop()
        for worker in workers.values():
            worker.stop()
