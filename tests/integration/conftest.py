"""Real processes: a tritonserver (session fixture in tests/conftest.py) and gateway subprocesses."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.launch import gateway as launch_gateway
from service.launch import worker as launch_worker
from service.launch.gateway import GatewayProcess
from service.launch.process import ManagedProcess, free_port
from service.launch.triton import TritonServer

REPO = Path(__file__).resolve().parents[2]


def start_gateway(
    triton_url: str,
    tmp: Path,
    *,
    shared_memory: bool,
    wait_serving: bool = True,
    decode_in_triton: bool = False,
    hint_spread: bool = True,
) -> GatewayProcess:
    settings = {
        "triton_url": triton_url,
        "triton_shared_memory": "1" if shared_memory else "0",
        "health_poll_s": "0.2",
        "decode_in_triton": "1" if decode_in_triton else "0",
        "hint_spread": "1" if hint_spread else "0",
    }
    return launch_gateway.start_gateway(settings, tmp, cwd=REPO, serving=wait_serving)


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
WORKER_LABEL_KEY = "integration"  # the gateway's PRIORLAB_WORKER_LABEL_KEY, so tests can name the workers


def spawn_worker(redis_url: str, tmp: Path, name: str, *, visibility_s: float = 2.0) -> ManagedProcess:
    """A worker process with one CPU slot and one torch thread (`wait_joined` waits for it)."""
    args = ("--visibility-timeout", str(visibility_s), "--threads", "1", "--device", "cpu")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp / f"worker-{name}.log"
    return launch_worker.spawn_worker(redis_url, log, name, args=args, env=env, cwd=REPO)


def wait_joined(redis_url: str, worker: ManagedProcess) -> ManagedProcess:
    """Returns once the worker's first heartbeat is on the bus (torch imported, groups created)."""
    name = worker.name.removeprefix("Restore worker ")
    try:
        launch_worker.wait_joined(worker, redis_url, name)
    except BaseException:
        worker.stop()
        raise
    return worker


def start_restore_gateway(redis_url: str, tmp: Path, **settings: str) -> GatewayProcess:
    """The gateway process with the Restorer on; no Triton (Colorize reports NOT_SERVING, unused here)."""
    settings = {
        "triton_url": f"127.0.0.1:{free_port()}",
        "health_poll_s": "0.2",
        "redis_url": redis_url,
        "worker_label_key": WORKER_LABEL_KEY,
        **settings,
    }
    return launch_gateway.start_gateway(
        settings, tmp, name="restore-gateway", cwd=REPO, wait_for=RESTORER_SERVICE, serving=False
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real redis-server (Debian package) on a free 127.0.0.1 port, no persistence; stopped by PID."""
    from service.launch.redis import RedisServer

    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@dataclass
class RestoreStack:
    redis_url: str
    gateway: GatewayProcess
    workers: dict[str, ManagedProcess]

    @property
    def target(self) -> str:
        return self.gateway.target


@pytest.fixture(scope="module")
def restore_stack(redis_server: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestoreStack]:
    """Redis + two workers (w1, w2; 2 s visibility timeout) + the gateway with small Restore limits."""
    url = redis_server.url  # type: ignore[attr-defined]
    tmp = tmp_path_factory.mktemp("restore")
    workers: dict[str, ManagedProcess] = {}
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
