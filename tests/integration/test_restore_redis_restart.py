"""Issue #16: Redis killed -9 with one Restore job running and two queued, restarted on the same port.

Real processes: a redis-server with its append-only file (fsync every second, as `make run` and
compose.yaml run it), one worker process and the gateway. Before the fix all three jobs were gone, and
the worker never took another one (NOGROUP); now all three finish, a watcher attached across the
restart sees its job's result, the gateway's health says NOT_SERVING while Redis is down, and a new
job runs afterwards.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from service.launch.gateway import GatewayProcess
from service.launch.process import ManagedProcess
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import restore_pb2, restore_pb2_grpc
from tests.integration.conftest import RESTORER_SERVICE, spawn_worker, start_restore_gateway, wait_joined

pytestmark = pytest.mark.slow

RUNNING_ITERATIONS = 2000  # 32x32 jpeg fit: 5-20 s on 2 cores (idle to busy): running at the kill


def png(size: int = 32, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_job(iterations: int, seed: int = 0) -> restore_pb2.RestoreRequest:
    return restore_pb2.RestoreRequest(
        image=png(seed=seed), jpeg=restore_pb2.JpegParams(), fixed_iterations=iterations, progress_every=10
    )


class Stack:
    def __init__(self, redis: RedisServer, worker: ManagedProcess, gateway: GatewayProcess) -> None:
        self.redis, self.worker, self.gateway = redis, worker, gateway
        self.channel = grpc.insecure_channel(gateway.target)
        self.stub = restore_pb2_grpc.RestorerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def restorer_health(self) -> int:
        request = health_pb2.HealthCheckRequest(service=RESTORER_SERVICE)
        return int(self.health.Check(request, timeout=5).status)

    def watch(self, job_id: str, timeout_s: float = 180.0) -> list[restore_pb2.RestoreEvent]:
        request = restore_pb2.WatchRestoreRequest(job_id=job_id)
        return list(self.stub.WatchRestore(request, timeout=timeout_s))


@pytest.fixture(params=[True], ids=["aof"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    redis = RedisServer.start(tmp_path / "redis", persistent=request.param)
    worker = gateway = None
    try:
        worker = wait_joined(redis.url, spawn_worker(redis.url, tmp_path, "w1", visibility_s=5.0))
        gateway = start_restore_gateway(redis.url, tmp_path, restore_visibility_timeout_s="5")
        running = Stack(redis, worker, gateway)
        yield running
        running.channel.close()
    finally:
        if gateway is not None:
            gateway.stop()
        if worker is not None:
            worker.stop()
        redis.stop()


def test_a_redis_killed_with_jobs_running_and_queued_loses_none(stack: Stack) -> None:
    running = stack.stub.SubmitRestore(jpeg_job(RUNNING_ITERATIONS), timeout=10).job_id
    # A watcher attached across the restart: it must see the result, not UNAVAILABLE or NOT_FOUND.
    attached: list[restore_pb2.RestoreEvent] = []
    progressed = threading.Event()
    failure: list[grpc.RpcError] = []

    def follow() -> None:
        try:
            for event in stack.stub.WatchRestore(
                restore_pb2.WatchRestoreRequest(job_id=running), timeout=180
            ):
                attached.append(event)
                if event.HasField("progress"):
                    progressed.set()
        except grpc.RpcError as e:
            failure.append(e)
        progressed.set()

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    assert progressed.wait(120), "the first job never made progress"
    queued = [stack.stub.SubmitRestore(jpeg_job(5, seed=i), timeout=10).job_id for i in (1, 2)]
    time.sleep(1.5)  # the append-only file is synced once a second
    assert not any(e.HasField("result") for e in attached), "the long job ended before the kill"

    stack.redis.handle.process.kill()  # SIGKILL: no shutdown, no final fsync
    stack.redis.handle.process.wait(10)
    health_while_down = []
    for _ in range(50):  # the gateway polls every 0.2 s; a check of a gone Redis gives up within 1 s
        health_while_down.append(stack.restorer_health())
        if health_while_down[-1] == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        time.sleep(0.2)
    stack.redis.restart()  # same port, same directory: Redis replays its append-only file

    for job_id in (running, *queued):
        events = stack.watch(job_id)
        assert events[-1].HasField("result"), (job_id, events[-1])
        assert events[-1].result.attempt == 1  # the running job was not retried: it finished its run
    watcher.join(60)
    assert not failure, failure
    assert attached[-1].HasField("result") and attached[-1].result.iterations_run == RUNNING_ITERATIONS
    assert health_while_down[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, health_while_down

    result = stack.stub.Restore(jpeg_job(3, seed=3), timeout=120)  # a new job after the restart
    assert result.iterations_run == 3
    deadline = time.monotonic() + 30
    while stack.restorer_health() != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "the Restorer never reported SERVING again"
        time.sleep(0.2)


@pytest.mark.parametrize("stack", [False], ids=["no-persistence"], indirect=True)
def test_without_persistence_the_jobs_are_reported_lost_and_the_queues_run_again(stack: Stack) -> None:
    """The SRE's case: Redis restarted with nothing on disk. Every job reads DATA_LOSS ("was lost"), not
    "expired"; the worker recreates its consumer groups (it logged NOGROUP forever) and takes new jobs."""
    running = stack.stub.SubmitRestore(jpeg_job(RUNNING_ITERATIONS), timeout=10).job_id
    for event in stack.stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=running), timeout=120):
        if event.HasField("progress"):
            break
    queued = [stack.stub.SubmitRestore(jpeg_job(5, seed=i), timeout=10).job_id for i in (1, 2)]
    stack.redis.handle.process.kill()
    stack.redis.handle.process.wait(10)
    stack.redis.restart()  # empty

    for job_id in (running, *queued):
        with pytest.raises(grpc.RpcError) as info:
            stack.watch(job_id, timeout_s=30)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS, info.value.details()
        assert f"job {job_id} was lost" in (info.value.details() or "")
    started = time.monotonic()
    result = stack.stub.Restore(jpeg_job(3, seed=3), timeout=120)  # stayed queued >= 45 s before
    assert result.iterations_run == 3
    print(f"a new job ran {time.monotonic() - started:.1f} s after the restart")
