"""spawn_worker: the environment a Restore worker process really starts with (read from /proc)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.launch.worker import GOMP_SPINCOUNT, spawn_worker

NOWHERE = "redis://127.0.0.1:1/0"  # the worker is only looked at, never joins


def _environment(pid: int, timeout_s: float = 10.0) -> dict[str, str]:
    """The process's environment once it runs the worker (before its exec, /proc shows ours)."""
    deadline = time.monotonic() + timeout_s
    while b"service.restore" not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.01)
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"GOMP_SPINCOUNT": GOMP_SPINCOUNT}),  # a short spin, then sleep
        ({"GOMP_SPINCOUNT": "5"}, {"GOMP_SPINCOUNT": "5"}),  # the caller's choice wins...
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),  # ...also as a policy
    ],
)
def test_the_worker_spins_briefly_in_openmp_unless_told_otherwise(
    tmp_path: Path, given: dict[str, str], expected: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    worker = spawn_worker(NOWHERE, tmp_path / "worker.log", "w-env", env={**env, **given})
    try:
        seen = _environment(worker.pid)
    finally:
        worker.stop(5.0)
    assert {k: v for k, v in seen.items() if k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} == expected
    assert seen["PRIORLAB_REDIS_URL"] == NOWHERE
