"""The job bus's state machine against a real redis-server (no workers, no torch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.bus.jobs import JobBus, failure_error, failure_event, is_terminal, level_of
from service.errors import Aborted, Cancelled, NotFound, ResourceExhausted, Unavailable
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import restore_pb2

CANCELLED = grpc.StatusCode.CANCELLED.value[0]  # JobFailure.code: the number


def stop(message: str = "job a was cancelled") -> Cancelled:
    return Cancelled(message)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def run(redis_url: str, body: Callable[[JobBus], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        await bus.ensure_groups()
        try:
            return await body(bus)
        finally:
            await bus.close()

    return asyncio.run(main())


def job(
    job_id: str, *, priority: int = 0, client: str = "c", max_attempts: int = 2
) -> restore_pb2.RestoreJob:
    request = restore_pb2.RestoreRequest(jpeg=restore_pb2.JpegParams(), priority=priority)
    return restore_pb2.RestoreJob(
        job_id=job_id,
        request=request,
        client_id=client,
        submitted_unix=time.time(),
        max_attempts=max_attempts,
    )


async def submit(bus: JobBus, *jobs: restore_pb2.RestoreJob, max_queue: int = 10) -> list[restore_pb2.Queued]:
    return [await bus.submit(j, max_queue=max_queue, max_per_client=10, ttl_s=60) for j in jobs]


async def events(bus: JobBus, job_id: str) -> list[restore_pb2.JobEvent]:
    return [e async for e in bus.events(job_id, block_s=0.1)]


def test_levels() -> None:
    assert [level_of(p) for p in (5, 0, -1)] == ["high", "normal", "low"]


def test_positions_and_priority_order(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        queued = await submit(bus, job("a"), job("b"), job("c", priority=1), job("d", priority=-1))
        assert [(q.position, q.queue_length) for q in queued] == [(1, 1), (2, 2), (1, 3), (4, 4)]
        order = []
        for _ in range(4):
            (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
            order.append(claim.job_id)
            assert (await bus.start("w", claim)).outcome == "run"
        assert order == ["c", "a", "b", "d"] and await bus.queue_length() == 0
        assert await bus.claim("w", visibility_s=30, block_s=0.1) == []

    run(redis_url, body)


def test_bounded_queue_and_client_quota(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"), job("b", client="other"), max_queue=2)
        with pytest.raises(ResourceExhausted, match=r"queue is full: 2 jobs waiting \(limit 2\)"):
            await submit(bus, job("c"), max_queue=2)
        with pytest.raises(ResourceExhausted, match="client 'c' has 1 unfinished"):
            await bus.submit(job("d"), max_queue=9, max_per_client=1, ttl_s=60)

    run(redis_url, body)


def test_finish_publishes_the_terminal_event_once_and_frees_the_quota(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"))
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        start = await bus.start("w", claim)
        assert start.outcome == "run" and start.attempt == 1 and start.job is not None
        assert start.job.job_id == "a"
        result = restore_pb2.RestoreEvent(job_id="a", result=restore_pb2.RestoreResult(job_id="a"))
        assert await bus.finish("w", claim, restore_pb2.JobEvent(event=result), "done")
        assert not await bus.finish("w", claim, restore_pb2.JobEvent(event=result), "done")  # fenced
        seen = await events(bus, "a")
        assert [e.event.WhichOneof("event") for e in seen] == ["queued", "result"] and is_terminal(seen[-1])
        assert await bus.redis.scard("restore:client:c") == 0 and await bus.redis.ttl("restore:job:a") > 0
        assert not await bus.cancel("a", stop("late"))  # already ended

    run(redis_url, body)


def test_cancel_of_a_queued_job_ends_it_at_once_and_workers_skip_it(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"))
        assert await bus.cancel("a", stop())
        seen = await events(bus, "a")
        assert seen[-1].failure.code == CANCELLED and await bus.queue_length() == 0
        assert repr(failure_error(seen[-1].failure)) == "Cancelled('job a was cancelled')"
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        assert (await bus.start("w", claim)).outcome == "skip"
        assert await bus.redis.xlen("restore:queue:normal") == 0
        with pytest.raises(NotFound, match="'nope' not found"):
            await bus.cancel("nope", stop())
        with pytest.raises(NotFound):
            await events(bus, "nope")

    run(redis_url, body)


def test_silent_worker_loses_its_job_and_attempts_run_out(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a", max_attempts=1))
        (claim,) = await bus.claim("dead", visibility_s=30, block_s=0.1)
        assert (await bus.start("dead", claim)).attempt == 1
        assert await bus.claim("w2", visibility_s=30, block_s=0.1) == []  # still within its visibility
        await asyncio.sleep(0.3)
        (reclaimed,) = await bus.claim("w2", visibility_s=0.2, block_s=0.1)
        assert reclaimed.job_id == "a"
        start = await bus.start("w2", reclaimed)
        assert start.outcome == "exhausted" and start.attempt == 1
        # The presumed-dead worker is fenced out: no heartbeat, no progress, no result.
        assert not await bus.heartbeat("dead", claim)
        assert not await bus.publish("dead", "a", failure_event(stop("zombie")))
        assert await bus.finish("w2", reclaimed, failure_event(Aborted("worker died")), "failed")
        assert (await events(bus, "a"))[-1].failure.code == grpc.StatusCode.ABORTED.value[0]

    run(redis_url, body)


def test_release_hands_the_job_to_the_next_claim_without_counting_an_attempt(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a", max_attempts=1))
        (claim,) = await bus.claim("w1", visibility_s=30, block_s=0.1)
        await bus.start("w1", claim)
        assert await bus.release("w1", claim) and await bus.queue_length() == 1
        (again,) = await bus.claim("w2", visibility_s=30, block_s=0.1)  # no visibility wait
        start = await bus.start("w2", again)
        assert again.job_id == "a" and start.outcome == "run" and start.attempt == 1

    run(redis_url, body)


def test_cancel_of_a_running_job_is_published_and_kept(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"))
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        await bus.start("w", claim)
        requests = bus.cancel_requests()
        listener = asyncio.ensure_future(requests.__anext__())
        await asyncio.sleep(0.2)  # subscribed
        assert await bus.cancel("a", stop())
        assert await asyncio.wait_for(listener, 5) == ("a", "CANCELLED")
        await requests.aclose()  # type: ignore[attr-defined]
        assert await bus.cancel_requested("a") == "CANCELLED"  # the backstop the heartbeat reads
        assert await bus.redis.get("restore:job:a:cancel") == b"CANCELLED"  # by name, for redis-cli

    run(redis_url, body)


def test_cancel_codes_written_as_numbers_by_an_older_gateway_are_still_read(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"), job("b"))
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        await bus.start("w", claim)
        await bus.redis.set("restore:job:a:cancel", grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        assert await bus.cancel_requested("a") == "DEADLINE_EXCEEDED"
        await bus.redis.set("restore:job:b:cancel", str(CANCELLED))
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        assert (await bus.start("w", claim)).code == "CANCELLED"
        requests = bus.cancel_requests()
        listener = asyncio.ensure_future(requests.__anext__())
        await asyncio.sleep(0.2)  # subscribed
        await bus.redis.publish("restore:cancel", f"a {CANCELLED}")
        assert await asyncio.wait_for(listener, 5) == ("a", "CANCELLED")
        await requests.aclose()  # type: ignore[attr-defined]

    run(redis_url, body)


def test_redis_unreachable_is_unavailable() -> None:
    async def main() -> None:
        bus = JobBus.from_url(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(Unavailable, match="unreachable"):
                await submit(bus, job("a"))
        finally:
            await bus.close()

    asyncio.run(main())


def test_redis_server_binds_loopback_without_persistence(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path)
    try:
        assert server.ping() and server.url.startswith("redis://127.0.0.1:")
    finally:
        server.stop()
    assert server.handle.process.returncode is not None and not list(tmp_path.glob("*.rdb"))


def test_a_failure_names_its_status_and_an_old_numeric_one_is_still_read() -> None:
    event = failure_event(Aborted("gone twice"))
    assert event.failure.status == "ABORTED" and event.failure.message == "gone twice"
    again = failure_error(restore_pb2.JobFailure.FromString(event.failure.SerializeToString()))
    assert isinstance(again, Aborted) and again.message == "gone twice"
    old = restore_pb2.JobFailure(code=grpc.StatusCode.ABORTED.value[0], message="from an older worker")
    assert isinstance(failure_error(old), Aborted)
