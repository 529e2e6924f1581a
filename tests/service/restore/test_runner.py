"""The worker's failure paths against a real Redis: each ends the job with the kind the gateway re-raises.

No job here reaches the engine (the image does not decode, the job was cancelled or out of attempts), so
these run in a second; the full DIP path is in tests/integration/test_restore.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.bus.jobs import JobBus, failure_error
from service.bus.timing import BusTiming
from service.errors import Aborted, Cancelled, DeadlineExceeded, InvalidArgument, PriorlabError
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.metrics import WorkerMetrics
from service.pb.priorlab.v1 import restore_pb2
from service.restore.runner import Worker


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def job(job_id: str, *, image: bytes = b"not an image", max_attempts: int = 2) -> restore_pb2.RestoreJob:
    request = restore_pb2.RestoreRequest(image=image, jpeg=restore_pb2.JpegParams())
    return restore_pb2.RestoreJob(
        job_id=job_id, request=request, client_id="c", submitted_unix=time.time(), max_attempts=max_attempts
    )


def ended_with(redis_url: str, job_: restore_pb2.RestoreJob, *, cancel: str | None = None) -> PriorlabError:
    """Run one worker until `job_` ends; the exception its failure event stands for."""

    async def main() -> PriorlabError:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        await bus.ensure_groups()
        await bus.submit(job_, max_queue=10, max_per_client=10, ttl_s=60)
        if cancel is not None:  # as if a cancel raced the worker's claim (the start script sees it)
            await bus.redis.set(f"restore:job:{job_.job_id}:cancel", cancel)
        worker = Worker(bus, name="w", devices=["cpu"], timing=BusTiming(2.0), metrics=WorkerMetrics())
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            async for event in bus.events(job_.job_id, block_s=0.1):
                if event.HasField("failure"):
                    return failure_error(event.failure)
            raise AssertionError("the job ended without a failure")
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await bus.close()

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_a_request_the_worker_cannot_decode_is_invalid_argument(redis_url: str) -> None:
    error = ended_with(redis_url, job("a"))
    assert type(error) is InvalidArgument and "not a valid file" in str(error)


def test_a_job_out_of_attempts_is_aborted(redis_url: str) -> None:
    error = ended_with(redis_url, job("a", max_attempts=0))
    assert type(error) is Aborted and "not retried again" in str(error)


@pytest.mark.parametrize(
    ("cancel", "kind"),
    [
        ("CANCELLED", Cancelled),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("1", Cancelled),
    ],  # "1": older gateway
)
def test_a_cancel_before_the_start_ends_the_job_with_its_code(
    redis_url: str, cancel: str, kind: type[PriorlabError]
) -> None:
    error = ended_with(redis_url, job("a"), cancel=cancel)
    assert type(error) is kind and "cancelled before it started" in str(error)


def test_a_job_out_of_attempts_names_each_failure_and_its_dead_letter_record(redis_url: str) -> None:
    async def main() -> tuple[PriorlabError, dict[str, str]]:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        await bus.ensure_groups()
        await bus.submit(job("a", max_attempts=1), max_queue=10, max_per_client=10, ttl_s=60)
        (claim,) = await bus.claim("dead", visibility_s=30, block_s=0.1)
        await bus.start("dead", claim)  # attempt 1, then silence
        worker = Worker(bus, name="w", devices=["cpu"], timing=BusTiming(0.5), metrics=WorkerMetrics())
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            async for event in bus.events("a", block_s=0.1):
                if event.HasField("failure"):
                    return failure_error(event.failure), await bus.dead_letter("a")
            raise AssertionError("the job ended without a failure")
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await bus.close()

    error, record = asyncio.run(asyncio.wait_for(main(), 30))
    assert type(error) is Aborted
    assert "attempt 1: worker dead stopped responding" in str(error)
    assert "Dead-letter record: restore:dead:a" in str(error)
    assert record["failures"].startswith("attempt 1: worker dead") and record["attempts"] == "1"


def test_a_worker_recreates_its_consumer_groups_after_redis_lost_them(redis_url: str) -> None:
    """Issue #16: after a Redis restart without persistence the worker logged NOGROUP and took nothing."""

    async def main() -> PriorlabError:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        worker = Worker(bus, name="w", devices=["cpu"], timing=BusTiming(2.0), metrics=WorkerMetrics())
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.sleep(0.5)  # claiming
            await bus.redis.flushdb()  # streams and groups gone, as after a restart without persistence
            await asyncio.sleep(0.5)
            await bus.submit(job("b"), max_queue=10, max_per_client=10, ttl_s=60)
            async for event in bus.events("b", block_s=0.1):
                if event.HasField("failure"):
                    return failure_error(event.failure)
            raise AssertionError("the job ended without a failure")
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await bus.close()

    error = asyncio.run(asyncio.wait_for(main(), 30))
    assert type(error) is InvalidArgument  # it was claimed and run: the image does not decode


def test_a_worker_started_before_redis_waits_for_it_and_beats_only_while_it_can_claim(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> tuple[bool, bool]:
        bus = JobBus.from_url(f"redis://127.0.0.1:{port}/0")
        worker = Worker(bus, name="w", devices=["cpu"], timing=BusTiming(1.0), metrics=WorkerMetrics())
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        server = None
        try:
            await asyncio.sleep(1.0)  # Redis is not there: the worker keeps trying
            assert not running.done() and not worker.can_claim
            server = await asyncio.to_thread(RedisServer.start, tmp_path, port=port)
            for _ in range(100):
                if await bus.redis.zscore("restore:workers", "w") is not None:
                    break
                await asyncio.sleep(0.1)
            joined = await bus.redis.zscore("restore:workers", "w") is not None
            return joined, worker.can_claim
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
            await bus.close()
            if server is not None:
                server.stop()

    assert asyncio.run(asyncio.wait_for(main(), 40)) == (True, True)
