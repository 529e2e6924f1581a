"""A whole `make run` stack as a test drives it: a process group started in a folder, its output, and
checks that nothing of it is left afterwards.

Whether anything is left behind is checked independently of the stack's own bookkeeping: every process
the stack starts inherits a marker variable in its environment, and after the stop no process on the
machine may carry it (an orphaned Triton stub is re-parented to PID 1, where a process-tree walk would
miss it); and no new `/dev/shm/priorlab*` region may remain that no live process maps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

UP_TIMEOUT_S = 240.0  # Triton loads four models and the worker imports torch, on a busy 2-core machine


def stack_command(port: int, *extra: str, python: str = sys.executable) -> list[str]:
    """`make run`'s entry point with its gRPC port on `port`, no metrics or HTTP server (no fixed port)."""
    base = [
        python,
        "-m",
        "service.launch.stack",
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--http-port",
        "0",
    ]
    return [*base, *extra]


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    log: Path
    marker: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(
                    f"the stack exited with {self.process.returncode} before {pattern!r}:\n{self.output()}"
                )
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} after {timeout_s:.0f} s:\n{self.output()}")

    def redis_ports(self) -> list[int]:
        return [int(port) for port in re.findall(r"Redis +redis://127\.0\.0\.1:(\d+)/", self.output())]

    def processes(self) -> list[str]:
        """`pid cmdline` of each live process of this stack."""
        return processes_with(self.marker, self.redis_ports())

    def leftovers(self, settle_s: float = 10.0) -> list[str]:
        """Processes of the stopped stack still alive after `settle_s` (one that is exiting, such as
        Python's multiprocessing resource tracker after its parent, gets that long)."""
        deadline = time.monotonic() + settle_s
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def interrupt(self) -> None:
        """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def wait_exit(self, timeout_s: float = 90.0) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            pytest.fail(f"the stack did not stop within {timeout_s:.0f} s:\n{self.output()}")


def _shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("priorlab*")}


def _mapped_regions() -> set[str]:
    """Regions some live process has mapped: another test's Triton, not a leak of ours."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        mapped.update(re.findall(r"/dev/shm/(priorlab\S*)", text))
    return mapped


def processes_with(marker: str, redis_ports: Sequence[int] = ()) -> list[str]:
    """`pid cmdline` of every live process whose environment holds the marker, or that is a
    redis-server on one of `redis_ports` (Redis sets its process title over its environment block,
    so the marker cannot be read there)."""
    needle = marker.encode()
    titles = [f"redis-server 127.0.0.1:{port}".encode() for port in redis_ports]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if needle in (entry / "environ").read_bytes() or any(t in command for t in titles):
                found.append(f"{entry.name} {command.decode(errors='replace')}")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


@contextmanager
def stacks(cwd: Path, logs: Path) -> Iterator[Callable[..., Stack]]:
    """Yields `start(command, **env) -> Stack`; afterwards stops any still running (SIGINT to the group)
    and asserts that none left a process or an unmapped shared-memory region behind."""
    started: list[Stack] = []
    regions_before = _shm_regions()

    def start(command: Sequence[str], **env: str) -> Stack:
        marker = uuid.uuid4().hex
        log = logs / f"stack-{len(started)}.log"
        environ: Mapping[str, str] = {**os.environ, **env, "PRIORLAB_TEST_MARKER": marker}
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(command), cwd=cwd, env=dict(environ), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        started.append(Stack(process, log, f"PRIORLAB_TEST_MARKER={marker}"))
        return started[-1]

    yield start
    for stack in started:
        if stack.process.poll() is None:  # a failed test: still stop it, by its group
            stack.interrupt()
            stack.wait_exit()
    for stack in started:
        left = stack.leftovers()
        assert not left, "processes left behind:\n" + "\n".join(left) + f"\n{stack.output()}"
    # The stacks' processes are gone (above), so a new region nobody maps is one they leaked.
    assert _shm_regions() - regions_before - _mapped_regions() == set(), "shared-memory regions left behind"
