"""The timing contract of the job bus (`service.bus.timing`): its orderings, and against Redis."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest

from service.bus.jobs import JobBus
from service.bus.timing import DEFAULT_VISIBILITY_TIMEOUT_S, BusTiming
from service.gateway.settings import Settings
from service.launch.redis import RedisServer


@pytest.mark.parametrize("visibility_s", [0.5, 2.0, 30.0, 600.0])
def test_the_derived_periods_keep_their_order(visibility_s: float) -> None:
    timing = BusTiming(visibility_s)
    # A live worker may miss two beats in a row (a slow Redis, a pause) and still count as live ...
    assert timing.worker_ttl_s >= 3 * timing.heartbeat_s
    # ... and it loses no job: several beats fit in one visibility timeout.
    assert timing.visibility_timeout_s >= 5 * timing.heartbeat_s
    # A dead worker is reported gone before its job is retried elsewhere.
    assert timing.worker_ttl_s < timing.visibility_timeout_s


def test_the_defaults_agree_across_processes() -> None:
    timing = BusTiming()
    assert (timing.visibility_timeout_s, timing.heartbeat_s, timing.worker_ttl_s) == (30.0, 6.0, 18.0)
    assert Settings().restore_visibility_timeout_s == DEFAULT_VISIBILITY_TIMEOUT_S
    assert (
        Settings.from_env({"PRIORLAB_RESTORE_VISIBILITY_TIMEOUT_S": "2"}).restore_visibility_timeout_s == 2.0
    )


@pytest.mark.parametrize("visibility_s", [0.0, -1.0, math.inf, math.nan])
def test_a_visibility_timeout_that_is_no_period_is_refused(visibility_s: float) -> None:
    with pytest.raises(ValueError, match="positive number of seconds"):
        BusTiming(visibility_s)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def test_a_live_worker_is_never_gone_and_a_dead_one_is_gone_within_the_ttl(redis_url: str) -> None:
    """The worker's beat (`JobBus.beat`) and the gateway's check (`live_workers`) with the derived periods."""
    timing = BusTiming(2.0)  # beats every 0.4 s, gone after 1.2 s

    async def main() -> tuple[list[int], int, int]:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        try:
            live, last_beat = [], 0.0
            for _ in range(5):  # checked just before each beat: the oldest a live worker's beat gets
                await bus.beat("w")
                last_beat = time.time()
                await asyncio.sleep(timing.heartbeat_s)
                live.append(await bus.live_workers(timing.worker_ttl_s))
            # The worker died after its last beat: the gateway's check says so once the TTL has passed.
            await asyncio.sleep(max(0.0, last_beat + timing.worker_ttl_s - time.time()) + 0.05)
            gone = await bus.live_workers(timing.worker_ttl_s)
            await bus.beat("w2")
            await bus.leave("w2")  # a graceful exit is gone at once
            return live, gone, await bus.live_workers(timing.worker_ttl_s)
        finally:
            await bus.close()

    live, gone, left = asyncio.run(main())
    assert live == [1] * 5 and gone == 0 and left == 0
