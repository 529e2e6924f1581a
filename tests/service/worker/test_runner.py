"""The worker's failure paths against a real Redis: each ends the job with the kind the gateway re-raises.

No job here reaches the engine (the image does not decode, the job was cancelled or out of attempts), so
these run in a second; the full DIP path is in tests/integration/test_restore.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from service.bus.jobs import JobBus, failure_error
from service.bus.timing import BusTiming
from service.errors import Aborted, Cancelled, DeadlineExceeded, InvalidArgument, PriorlabError
from service.launch.redis import RedisServer
from service.metrics import WorkerMetrics
from service.pb.priorlab.v1 import restore_pb2
from service.worker.runner import Worker


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
