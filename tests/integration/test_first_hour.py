"""A new user's first hour: `make run` in a copy of the repository, the README's commands verbatim, Ctrl-C.

The copy holds the tracked tree plus what `make` built (generated protobuf code, exported models) and
links this checkout's venv, so `make run` there has nothing left to build and starts the stack from the
same entry point with the same relative work directory a user gets. Ports come from the environment
(`PRIORLAB_PORT`, `PRIORLAB_METRICS_PORT`), which `make run` honours, so the test never takes 50051.

What is left behind is checked by `tests/integration/stacks.py`, independently of the stack's own
bookkeeping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.launch.process import free_port
from tests.integration.stacks import UP_TIMEOUT_S, Stack, stack_command, stacks
from tests.readme import client_commands

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PYTHON = ".venv/bin/python"  # the clone's, as `make run` calls it
# Not copied: history, caches, local run state, benchmark results (large, and not needed to serve).
_SKIP = {
    ".git",
    ".venv",
    ".cache",
    ".run",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "results",
}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as a user has it after `make` built it once (the venv is linked, not copied)."""
    # The clone's `make` would otherwise re-run `make deps` through the link, and the editable install
    # would then point this checkout's venv (its `priorlab` command, its imports) at the clone, deleted
    # after the test: it happened once the lock file changed after the last `make deps`.
    stamp = REPO / ".venv" / ".installed"
    inputs = [REPO / "requirements.lock", REPO / "pyproject.toml"]
    if not stamp.exists() or any(f.stat().st_mtime > stamp.stat().st_mtime for f in inputs):
        pytest.fail("the venv is older than requirements.lock or pyproject.toml: run `make deps` first")
    root = tmp_path_factory.mktemp("first-hour") / "priorlab"
    shutil.copytree(REPO, root, ignore=lambda _dir, names: [n for n in names if n in _SKIP], symlinks=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


@pytest.fixture
def start(clone: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Starts commands in the clone, each its own process group; afterwards nothing of them may be left."""
    with stacks(clone, tmp_path) as start:
        yield start


def test_make_run_serves_the_readme_commands_and_ctrl_c_leaves_nothing(
    start: Callable[..., Stack], clone: Path
) -> None:
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    stack = start(
        ["make", "--no-print-directory", "run"],
        PRIORLAB_PORT=str(port),
        PRIORLAB_METRICS_PORT=str(metrics_port),
        PRIORLAB_HTTP_PORT=str(http_port),
    )
    stack.wait_for(r"priorlab is up", UP_TIMEOUT_S)
    assert f"127.0.0.1:{port}" in stack.output()
    assert f"http://127.0.0.1:{metrics_port}/metrics" in stack.output(), "make run prints the metrics URL"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        assert b"priorlab_" in reply.read()
    assert f"http://127.0.0.1:{http_port}/" in stack.output(), "make run prints the web page's URL"
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=5) as reply:
        assert b"<html" in reply.read().lower()

    commands = client_commands(clone / "README.md", section="Try it")
    assert {c.split()[1] for c in commands} >= {"colorize", "suggest", "restore"}, commands
    for command in commands:
        result = subprocess.run(
            command,
            shell=True,
            cwd=clone,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PRIORLAB_TARGET": f"127.0.0.1:{port}"},
        )
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    colorized = re.search(r"colorize \S+ (\S+)", "\n".join(commands))
    assert colorized is not None and Path(colorized.group(1)).stat().st_size > 0

    stack.interrupt()
    # The stack exits 0; make, interrupted too, then ends by the same signal, as it does in a terminal.
    assert stack.wait_exit() in (0, -signal.SIGINT), stack.output()
    for name in ("gateway", "Restore worker", "Redis", "Triton"):
        assert re.search(rf"{name}( \(pid \d+\))? stopped", stack.output()), name


def test_a_redis_that_cannot_start_stops_triton_and_names_the_cause(start: Callable[..., Stack]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        redis_port = taken.getsockname()[1]
        stack = start(stack_command(free_port(), "--redis-port", str(redis_port), python=PYTHON))
        assert stack.wait_exit(UP_TIMEOUT_S) == 1, stack.output()
    output = stack.output()
    assert "priorlab failed to start: redis-server" in output
    assert "Address already in use" in output, "the real cause, from Redis's own log"
    assert re.search(r"Triton \(pid \d+\) stopped", output), "Triton, started first, is stopped"


def test_a_triton_that_cannot_load_a_model_fails_with_its_log(
    start: Callable[..., Stack], clone: Path
) -> None:
    broken = clone.parent / "broken_repository"
    shutil.copytree(clone / "model_repository", broken)
    model = next((broken / "larsson16").glob("[0-9]*/model.onnx"))
    model.write_bytes(b"not an ONNX graph")
    stack = start(stack_command(free_port(), "--repository", str(broken), python=PYTHON))
    assert stack.wait_exit(UP_TIMEOUT_S) == 1, stack.output()
    output = stack.output()
    assert "priorlab failed to start: tritonserver" in output
    assert "larsson16" in output, "Triton's own log names the model that failed"
    assert "Restore worker" not in output.split("failed to start")[0], "nothing after Triton was started"


# A Python-backend model whose load never ends: it marks that Triton is loading, then waits. A stack
# started on a repository holding it stays in start-up until interrupted, however fast the host.
_SLOW_MODEL = """
import pathlib, time

class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path(args["model_repository"], "loading").touch()
        time.sleep(600)

    def execute(self, requests):
        return []
"""
_SLOW_CONFIG = """name: "slow_to_load"
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def test_ctrl_c_during_start_up_stops_what_was_started(start: Callable[..., Stack], clone: Path) -> None:
    repository = clone.parent / "slow_repository"
    shutil.copytree(clone / "model_repository", repository)
    slow = repository / "slow_to_load"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(_SLOW_MODEL)
    (slow / "configs").mkdir()
    (slow / "configs" / "cpu.pbtxt").write_text(_SLOW_CONFIG)

    stack = start(stack_command(free_port(), "--repository", str(repository), python=PYTHON))
    deadline = time.monotonic() + UP_TIMEOUT_S
    while not (slow / "loading").exists():  # Triton is up to its stub processes, and cannot finish
        assert stack.process.poll() is None and time.monotonic() < deadline, stack.output()
        time.sleep(0.1)
    stack.interrupt()
    assert stack.wait_exit() == 130, stack.output()
    assert "interrupted; everything started is stopped" in stack.output()
    assert "priorlab is up" not in stack.output()
