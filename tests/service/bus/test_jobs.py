"""The job bus's state machine against a real redis-server (no workers, no torch)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.bus.jobs import (
    JobBus,
    failure_error,
    failure_event,
    is_terminal,
    level_of,
    missing,
    new_job_id,
    owner_tag,
    submitted_unix,
    tagged_for,
    unknown_job,
)
from service.errors import Aborted, Cancelled, DataLoss, NotFound, ResourceExhausted, Unavailable
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


def test_a_timeout_ends_a_watch_whichever_tick_it_fires_on(redis_url: str) -> None:
    """`GET /v1/restore/{id}` is an `asyncio.timeout` around `events` of a job that may never end: the
    timeout must end the watch wherever it lands, and the client must answer at once afterwards.

    Fired one loop tick later each time, it lands in every await of the watch's first commands (EXISTS,
    then XREAD: writes and reads), among them the ticks between a command's write completing and the
    task resuming, where Python 3.11's `asyncio.wait_for` swallowed the cancel and the watch read on
    forever (`_DeliversCancels`).
    """

    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"))
        loop = asyncio.get_running_loop()
        missed: list[str] = []

        async def watch(timeouts: list[asyncio.Timeout]) -> None:
            async with asyncio.timeout(None) as timeout:
                timeouts.append(timeout)
                async for _ in bus.events("a", block_s=0.2, ttl_s=60):
                    pass

        for ticks in range(40):
            timeouts: list[asyncio.Timeout] = []
            task = asyncio.create_task(watch(timeouts))
            for _ in range(ticks + 1):  # the first runs the watch up to its first await
                await asyncio.sleep(0)
            timeouts[0].reschedule(loop.time())  # fires on the next tick
            await asyncio.wait({task}, timeout=2.0)
            if not task.done():
                missed.append(f"{ticks}: still reading")
                task.cancel()
                await asyncio.wait({task})
            elif not isinstance(task.exception(), TimeoutError):
                missed.append(f"{ticks}: {task.exception()!r}")
            async with asyncio.timeout(1.0):
                assert await bus.redis.ping()  # the connection the cancel hit is not left half-read
        assert not missed, f"a timeout fired this many ticks in did not end the watch: {missed}"

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


# --- issue #16: nothing is lost ---


def test_job_ids_carry_their_submission_time_and_owner_tag_and_are_unguessable() -> None:
    a, b = new_job_id(1_700_000_000.5, "alice"), new_job_id(1_700_000_000.5, "alice")
    assert a != b and len(a) == 41 and a.isalnum() and a.startswith("t")
    assert a[:21] == b[:21] and a[21:] != b[21:]  # same time and owner; 80 random bits of their own
    assert submitted_unix(a) == 1_700_000_000.5
    tag = hashlib.sha256(b"alice").hexdigest()[:8]
    assert owner_tag("alice") == tag and a[13:21] == tag
    assert tagged_for(a, "alice") and not tagged_for(a, "bob") and not tagged_for(a, "")
    assert owner_tag("bob") != tag and new_job_id(1.0, "bob")[13:21] == owner_tag("bob")


def test_job_ids_of_before_tags_still_parse_and_others_do_not() -> None:
    untagged = "t" + f"{1_700_000_000_500:012x}" + "0123456789abcdef0123"  # 33 characters, as before
    assert submitted_unix(untagged) == 1_700_000_000.5
    assert not tagged_for(untagged, "alice")  # no owner to read from it
    assert submitted_unix("0123456789abcdef0123456789abcdef") is None  # a uuid4 id of before that
    for bad in (
        "t" + "z" * 32,
        "t" + "z" * 40,
        "T" + "0" * 40,
        "t" + "0" * 39,
        "t" + "0" * 41,
        "t" + "A" * 40,
    ):
        assert submitted_unix(bad) is None and not tagged_for(bad, "alice"), bad


def test_a_vanished_record_reads_as_lost_within_the_ttl_and_not_found_after() -> None:
    job_id = new_job_id(1000.0, "alice")
    lost = missing(job_id, ttl_s=60, now=1030.0)
    assert isinstance(lost, DataLoss) and f"job {job_id} was lost" in str(lost)
    assert "expired" not in str(lost)
    assert type(missing(job_id, ttl_s=60, now=1061.0)) is NotFound  # may have expired
    assert type(missing(job_id, ttl_s=60, now=990.0)) is DataLoss  # a gateway whose clock is behind
    assert type(missing(job_id, ttl_s=60, now=900.0)) is NotFound  # an id from the future: not ours
    assert type(missing("abc", ttl_s=60, now=1030.0)) is NotFound  # not one of ours
    untagged = job_id[:13] + job_id[21:]  # the same id made before tags: still tells lost from expired
    assert type(missing(untagged, ttl_s=60, now=1030.0)) is DataLoss
    assert type(missing(untagged, ttl_s=60, now=1061.0)) is NotFound
    assert str(unknown_job("abc")) == str(missing("abc", ttl_s=60, now=1030.0))  # one text for all
    assert len(str(missing("x" * 10_000, ttl_s=60, now=1030.0))) < 200  # the id is not echoed whole


def test_a_flushed_job_is_lost_for_watch_and_cancel(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        j = job(new_job_id(time.time()))
        await submit(bus, j)
        await bus.redis.flushdb()  # what a restart without persistence does
        with pytest.raises(DataLoss, match="was lost: its record vanished from the job bus"):
            await events_ttl(bus, j.job_id)
        with pytest.raises(DataLoss, match="was lost"):
            await bus.cancel(j.job_id, stop(), ttl_s=60)

    run(redis_url, body)


async def events_ttl(bus: JobBus, job_id: str) -> list[restore_pb2.JobEvent]:
    return [e async for e in bus.events(job_id, block_s=0.1, ttl_s=60)]


def test_an_idempotency_key_returns_the_first_job_per_client_until_its_result_expires(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        async def once(j: restore_pb2.RestoreJob, key: str) -> tuple[str, restore_pb2.Queued | None]:
            return await bus.submit_once(j, max_queue=10, max_per_client=10, ttl_s=60, idempotency_key=key)

        first, queued = await once(job("a"), "k1")
        assert first == "a" and queued is not None and queued.position == 1
        assert await once(job("b"), "k1") == ("a", None)  # a retry: no second job
        assert (await once(job("c", client="other"), "k1"))[0] == "c"  # keys are per client
        assert (await once(job("d"), "k2"))[0] == "d"
        assert (await once(job("e"), ""))[0] == "e" and (await once(job("f"), ""))[0] == "f"  # no key
        assert await bus.queue_length() == 5
        assert await bus.redis.ttl("restore:idem:c:k1") == -1  # kept while the job is unfinished
        assert await bus.cancel("a", stop())
        assert 0 < await bus.redis.ttl("restore:idem:c:k1") <= 60  # then for the result TTL
        assert await once(job("g"), "k1") == ("a", None)

    run(redis_url, body)


def test_a_job_out_of_attempts_leaves_a_dead_letter_record_with_each_failure(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a", max_attempts=2))
        (claim,) = await bus.claim("w1", visibility_s=30, block_s=0.1)
        assert (await bus.start("w1", claim)).attempt == 1
        await asyncio.sleep(0.25)
        (claim,) = await bus.claim("w2", visibility_s=0.2, block_s=0.1)  # w1 went silent
        assert (await bus.start("w2", claim)).attempt == 2
        await asyncio.sleep(0.25)
        (claim,) = await bus.claim("w3", visibility_s=0.2, block_s=0.1)  # so did w2
        start = await bus.start("w3", claim)
        assert start.outcome == "exhausted" and start.attempt == 2
        assert start.failures == (
            "attempt 1: worker w1 stopped responding (no heartbeat for the visibility timeout)",
            "attempt 2: worker w2 stopped responding (no heartbeat for the visibility timeout)",
        )
        record = await bus.dead_letter("a")
        assert record["attempts"] == "2" and record["client"] == "c"
        assert record["failures"] == "\n".join(start.failures)
        kept = await bus.redis.hget("restore:dead:a", "job")
        assert restore_pb2.RestoreJob.FromString(kept).job_id == "a"  # the request, to submit again
        assert 0 < await bus.redis.ttl("restore:dead:a") <= 60
        assert await bus.finish("w3", claim, failure_event(Aborted("out of attempts")), "failed")
        assert 0 < await bus.redis.ttl("restore:job:a:attempts") <= 60

    run(redis_url, body)


def test_a_claim_recreates_consumer_groups_that_vanished(redis_url: str) -> None:
    """Issue #16: after a restart without persistence the worker logged NOGROUP forever."""

    async def body(bus: JobBus) -> None:
        await bus.redis.flushdb()  # streams and groups gone
        assert await bus.claim("w", visibility_s=30, block_s=0.1) == []  # was: ResponseError NOGROUP
        await submit(bus, job("a", priority=-1))
        (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)
        assert claim.job_id == "a" and (await bus.start("w", claim)).outcome == "run"

    run(redis_url, body)


def test_scripts_are_loaded_again_after_a_script_flush(redis_url: str) -> None:
    async def body(bus: JobBus) -> None:
        await submit(bus, job("a"))
        await bus.redis.script_flush()  # what a restarted Redis has: no scripts
        await submit(bus, job("b"))  # EVALSHA -> NOSCRIPT -> SCRIPT LOAD -> EVALSHA
        assert await bus.queue_length() == 2

    run(redis_url, body)


def test_a_watcher_rides_out_a_redis_restart_with_persistence(tmp_path: Path) -> None:
    """AOF everysec: the job survives a kill -9 and the watcher's stream resumes where it was."""
    server = RedisServer.start(tmp_path, persistent=True)

    async def main() -> list[str]:
        bus = JobBus.from_url(server.url)
        try:
            await bus.ensure_groups()
            await submit(bus, job("a"))
            seen: list[str] = []
            stream = bus.events("a", block_s=0.1, ttl_s=60)
            seen.append(str((await anext(stream)).event.WhichOneof("event")))
            await asyncio.sleep(1.2)  # the append-only file is synced once a second
            await asyncio.to_thread(server.handle.process.kill)
            await asyncio.to_thread(server.restart)
            (claim,) = await bus.claim("w", visibility_s=30, block_s=0.1)  # the queue survived
            await bus.start("w", claim)
            result = restore_pb2.RestoreEvent(job_id="a", result=restore_pb2.RestoreResult(job_id="a"))
            assert await bus.finish("w", claim, restore_pb2.JobEvent(event=result), "done")
            seen += [str(e.event.WhichOneof("event")) async for e in stream]
            return seen
        finally:
            await bus.close()

    try:
        assert asyncio.run(asyncio.wait_for(main(), 30)) == ["queued", "result"]
    finally:
        server.stop()
