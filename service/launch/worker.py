"""Start a Restore worker process (`python -m service.worker`) and wait until it has joined.

A worker has joined once its first heartbeat is on the bus (`restore:workers`, see `service.bus.jobs`):
torch is imported and its consumer groups exist. Until then a job would wait in the queue with no
one to take it, so `make run` and the tests wait for the heartbeat, and a worker that dies while
starting is reported with the tail of its own log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import redis

from service.bus.jobs import WORKERS_KEY
from service.launch.process import ManagedProcess

JOIN_TIMEOUT_S = 120.0  # importing torch on a busy 2-core machine takes tens of seconds


def spawn_worker(
    redis_url: str,
    log_path: Path,
    name: str,
    *,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = False,
    nice: int = 0,
) -> ManagedProcess:
    """The worker process, not yet waited for (`wait_joined`); `args` are extra worker flags; `nice`
    as in `ManagedProcess.spawn` (DIP fits are bulk work: below the gateway).

    The bus URL goes in the environment, not on the command line: it holds make run's Redis password,
    and any local user can read another's command line (`ps`), not its environment."""
    command = [sys.executable, "-m", "service.worker", "--name", name, *args]
    # OpenMP threads wait passively (the caller's value wins). The fit's threads share the cores with
    # whatever else runs, and libgomp's default spin-wait stalls each parallel region behind a thread
    # the scheduler took away: beside one busy single-thread process, a 10-iteration 96² Restore took
    # 31-35 s instead of 1.1 s; passive, 2-3 s (and 1.46 s alone). libgomp reads it once, at load.
    environ = {
        "OMP_WAIT_POLICY": "PASSIVE",
        **(os.environ if env is None else env),
        "PRIORLAB_REDIS_URL": redis_url,
    }
    return ManagedProcess.spawn(
        f"Restore worker {name}", command, log_path, env=environ, cwd=cwd, append=append, nice=nice
    )


def wait_joined(worker: ManagedProcess, redis_url: str, name: str, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Returns once `name`'s heartbeat is on the bus; StartupError (with its log) otherwise."""
    client = redis.Redis.from_url(redis_url)

    def joined() -> bool:
        try:
            return client.zscore(WORKERS_KEY, name) is not None
        except redis.RedisError:
            return False

    try:
        worker.wait_until(joined, timeout_s, poll_s=0.2)
    finally:
        client.close()
