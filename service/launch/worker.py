"""Start a Restore worker process (`python -m service.restore`) and wait until it has joined.

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


# libgomp's spin before a waiting thread sleeps (its default is 300,000). The fit's threads share the
# cores with whatever else runs, and a long spin stalls each parallel region behind a thread that the
# scheduler took away. 256² fits, s/iteration, 2 threads (30 Nov, this 2-core host): beside one busy
# single-thread process the default took 3.13 s for the JPEG net, 10,000 0.196 s, passive 0.088 s;
# on an idle host 0.056 / 0.058 / 0.088 s (denoising: 0.722 / 0.727 alone, 1.46 s / passive 1.34 s
# beside it). 10,000 keeps the idle speed and most of passive's gain.
GOMP_SPINCOUNT = "10000"


def openmp_waits(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's OpenMP wait setting, unless the caller chose one (libgomp reads it once, at load)."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return {}
    return {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}


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
    command = [sys.executable, "-m", "service.restore", "--name", name, *args]
    environ = {**(os.environ if env is None else env), "PRIORLAB_REDIS_URL": redis_url}
    environ.update(openmp_waits(environ))
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
