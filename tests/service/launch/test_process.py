"""ManagedProcess.spawn's `nice`: the child, its later threads and its session all run below us."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from service.launch.process import ManagedProcess

# A child that starts a thread after it began, then prints that thread's niceness and waits.
CHILD = """
import os, sys, threading, time
seen = []
t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
t.start(); t.join()
print("thread-nice", seen[0], flush=True)
time.sleep(60)
"""


def _niceness(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of proc(5); fields[0] is field 3 (state)


def test_the_child_its_threads_and_its_session_run_at_the_nice_value(tmp_path: Path) -> None:
    child = ManagedProcess.spawn("child", [sys.executable, "-c", CHILD], tmp_path / "child.log", nice=7)
    try:
        child.wait_until(lambda: "thread-nice" in child.log_tail(), 30.0)
        assert _niceness(child.pid) == 7
        assert "thread-nice 7" in child.log_tail()
        autogroup = Path(f"/proc/{child.pid}/autogroup")
        if Path("/proc/self/autogroup").exists():  # kernels with autogroup scheduling: the session's weight
            assert autogroup.read_text().split()[-1] == "7"
            assert Path("/proc/self/autogroup").read_text() != autogroup.read_text()  # its own session
    finally:
        child.stop()


def test_without_nice_the_child_runs_at_ours(tmp_path: Path) -> None:
    child = ManagedProcess.spawn("child", [sys.executable, "-c", CHILD], tmp_path / "child.log")
    try:
        child.wait_until(lambda: "thread-nice" in child.log_tail(), 30.0)
        assert _niceness(child.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        child.stop()


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_nice_value_out_of_range_is_refused_before_anything_starts(tmp_path: Path, nice: int) -> None:
    with pytest.raises(ValueError, match=f"got {nice}"):
        ManagedProcess.spawn("child", [sys.executable, "-c", CHILD], tmp_path / "child.log", nice=nice)
    assert not (tmp_path / "child.log").exists()
