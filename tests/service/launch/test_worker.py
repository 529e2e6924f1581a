"""spawn_worker: the environment a Restore worker process really starts with (read from /proc)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.launch.worker import spawn_worker

NOWHERE = "redis://127.0.0.1:1/0"  # the worker is only looked at, never joins


def _environment(pid: int, timeout_s: float = 10.0) -> dict[str, str]:
    """The process's environment once it runs the worker (before its exec, /proc shows ours)."""
    deadline = time.monotonic() + timeout_s
    while b"service.worker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.01)
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_worker_waits_passively_in_openmp_unless_told_otherwise(
    tmp_path: Path, given: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    worker = spawn_worker(NOWHERE, tmp_path / "worker.log", "w-env", env=env)
    try:
        seen = _environment(worker.pid)
    finally:
        worker.stop(5.0)
    assert seen["OMP_WAIT_POLICY"] == expected
    assert seen["PRIORLAB_REDIS_URL"] == NOWHERE
