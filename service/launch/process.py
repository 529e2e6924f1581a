"""One handle for every local process priorlab starts: spawn, readiness, stop by PID, log tail.

Used by `make run` (`service.launch.stack`), the benchmarks and the integration tests alike, so a
process is started and stopped the same way everywhere:

- each child gets its **own process group** (`process_group=0`) in the caller's session: a
  terminal's Ctrl-C reaches only the parent's group, which then stops the children in order (workers
  hand their jobs back before Redis goes);
- its stdout and stderr go to **its own log file**, whose last lines are the message when it fails
  to start, so the real cause (Redis's "Can't open the log file", Triton's model load error) is
  printed instead of a secondary error;
- `stop()` sends SIGTERM by PID, escalates to SIGKILL of the whole process group after a grace
  period, and then sweeps the group once more: Triton's Python-backend stubs are its children in
  its group, and they outlive a killed parent (orphaned to PID 1) unless the group is swept;
- `nice` > 0 runs bulk compute (Triton, the Restore workers) below the gateway. On Linux with
  autogroup scheduling (the default on desktop and many server kernels, and on this project's hosts)
  the scheduler first shares the cores fairly between *sessions* and nice only weighs threads inside
  one, which is why the children stay in the caller's session. History: they used to get sessions of
  their own (`start_new_session`), so Triton at nice 10 still had an equal share against the gateway
  (issue #16: refusal p99 61 ms, max 87-105 ms at 2x load); lowering those sessions' own weight
  (`/proc/<pid>/autogroup` at 10) fixed the refusals but made the whole compute side weigh a tenth of
  *any* other busy session on the host: on a loaded machine a 10-iteration Restore took over 300 s.
  One session for the stack gives both: inside it the gateway outweighs Triton and the workers, and
  against the user's other work the stack weighs as one session. Where sessions are not weighed
  apart (autogroup off, or enabled but not in effect: a container whose cgroup has its own cpu
  controller, as on CI), nice weighs the compute side against every process there, as nice always
  did; `--compute-nice 0` is the choice for such a host shared with other busy work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_LINES = 20
ERROR_LINES = 5
MAX_LINE = 400  # Triton writes a Python traceback into one line
_ERROR = re.compile(r"(?i)\b(error|failed|fatal|cannot|can't)\b")


class StartupError(RuntimeError):
    """A process did not come up; the message names it, the reason, and the tail of its own log."""


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free unless someone races for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ("" when there is none yet)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A child process in its own process group with its own log file; `spawn`, `wait_until`, `stop`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(
        cls,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        append: bool = False,
        nice: int = 0,
    ) -> ManagedProcess:
        """`append`: a restart keeps the log of the run before it (the crash is in there); `nice`:
        the child's niceness (module docstring), 0 = the caller's."""
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be 0..19 (0 = unchanged), got {nice}")
        if nice:
            args = ["nice", "-n", str(nice), *args]  # at exec, so every thread and child inherits it
        log_path = log_path.absolute()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab" if append else "wb") as log_file:
            try:
                process = subprocess.Popen(
                    list(args),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=None if env is None else dict(env),
                    cwd=cwd,
                    process_group=0,
                )
            except OSError as e:
                raise StartupError(f"{name} could not be started ({args[0]}): {e}") from None
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def failure(self, reason: str) -> StartupError:
        """The error to raise for this process: the reason, the first error lines of its own log
        (Triton logs the model that failed long before its closing table), and its last lines."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        if not lines:
            return StartupError(f"{self.name} (pid {self.pid}) {reason} (its log {self.log_path} is empty)")
        head, tail = lines[:-TAIL_LINES], lines[-TAIL_LINES:]
        errors = [line[:MAX_LINE] for line in head if _ERROR.search(line)][:ERROR_LINES]
        first = f"\n--- first errors in {self.log_path} ---\n" + "\n".join(errors) if errors else ""
        last = f"\n--- last lines of {self.log_path} ---\n" + "\n".join(line[:MAX_LINE] for line in tail)
        return StartupError(f"{self.name} (pid {self.pid}) {reason}{first}{last}")

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, *, poll_s: float = 0.1) -> None:
        """Polls `ready()` until it holds; StartupError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise self.failure(f"exited with status {self.process.returncode} while starting")
            if ready():
                return
            if time.monotonic() >= deadline:
                raise self.failure(f"was not ready after {timeout_s:g} s")
            time.sleep(poll_s)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM by PID, SIGKILL of its process group after `grace_s`, then sweep the group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(self.pid)
                self.process.wait()
        # The group id is the child's PID (own process group); members left behind (a stub whose
        # server was killed) are still in it. Nothing else can hold that id while they live.
        _kill_group(self.pid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
