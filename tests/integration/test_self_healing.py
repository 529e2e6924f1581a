"""Faults injected into `make run`'s stack, and its supervisor recovering from each without a restart.

One stack for the module (the same entry point as `make run`, free ports). Each test kills or stops one
process by PID, then calls the service until it answers again, and checks the supervisor said what it
did. Fast versions: tiny images and working sizes, a few DIP iterations.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.launch.process import free_port
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2, restore_pb2_grpc
from tests.integration.stacks import UP_TIMEOUT_S, Stack, stack_command, stacks

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
COLORIZER = "priorlab.v1.Colorizer"
RECOVERY_S = 150.0  # Triton reloads four models on a busy 2-core machine
PHOTO = (REPO / "samples" / "aitzgorri.jpg").read_bytes()
SMALL = (REPO / "samples" / "aitzgorri_96.png").read_bytes()


@dataclass
class Running:
    stack: Stack
    target: str

    def pid_of(self, pattern: str) -> int:
        """The PID of the stack's one process whose command line matches `pattern`."""
        found = [int(line.split()[0]) for line in self.stack.processes() if re.search(pattern, line)]
        assert len(found) == 1, (pattern, self.stack.processes())
        return found[0]

    def settled(self, timeout_s: float = RECOVERY_S) -> None:
        """Waits until every recovery the supervisor began has ended ("... back in"), so each test's
        fault meets a stack at rest, not one still repairing the fault before it."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.stack.output()
            begun = len(re.findall(r"^supervisor: .*: restarting$", out, re.M))
            if begun == len(re.findall(r"^supervisor: .* back in ", out, re.M)):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the supervisor is still recovering after {timeout_s:.0f} s:\n{out[-4000:]}")
            time.sleep(0.5)

    def colorize(self, model: str = "eccv16", timeout_s: float = 10.0) -> None:
        request = colorize_pb2.ColorizeRequest(image=PHOTO, model=model, working_size=64)
        with grpc.insecure_channel(self.target) as channel:
            colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=timeout_s)

    def restore(self, timeout_s: float = 120.0) -> restore_pb2.RestoreResult:
        request = restore_pb2.RestoreRequest(
            image=SMALL, denoise=restore_pb2.DenoiseParams(sigma=25), fixed_iterations=3
        )
        with grpc.insecure_channel(self.target) as channel:
            return restore_pb2_grpc.RestorerStub(channel).Restore(request, timeout=timeout_s)

    def until_ok(self, call: Callable[[], object], timeout_s: float = RECOVERY_S) -> float:
        """Seconds until `call` succeeds; fails the test with the stack's output after `timeout_s`."""
        start = time.monotonic()
        while True:
            try:
                call()
                return time.monotonic() - start
            except grpc.RpcError as e:
                if time.monotonic() - start > timeout_s:
                    pytest.fail(
                        f"no recovery in {timeout_s:.0f} s ({e.code().name}):\n{self.stack.output()[-4000:]}"
                    )
                time.sleep(0.5)


@contextmanager
def _running(tmp: Path, *extra: str) -> Iterator[Running]:
    """A stack from `make run`'s entry point on a free port, up until the module is done."""
    port = free_port()
    with stacks(REPO, tmp) as start:
        stack = start(stack_command(port, "--workdir", str(tmp / "run"), *extra))
        stack.wait_for(r"priorlab is up", UP_TIMEOUT_S)
        yield Running(stack, f"127.0.0.1:{port}")
        stack.interrupt()
        assert stack.wait_exit() == 0, stack.output()


@pytest.fixture(scope="module")
def stack_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with _running(tmp_path_factory.mktemp("self-healing")) as stack:
        yield stack


@pytest.fixture
def running(stack_for_module: Running) -> Running:
    stack_for_module.settled()
    return stack_for_module


def test_a_killed_triton_is_restarted_on_the_same_ports(running: Running) -> None:
    running.colorize()
    os.kill(running.pid_of(r"bin/tritonserver"), signal.SIGKILL)
    took = running.until_ok(running.colorize)
    running.stack.wait_for(r"supervisor: Triton exited with status -9: restarting", 5)
    running.stack.wait_for(r"supervisor: Triton back in", 5)
    print(f"Triton killed: serving again after {took:.1f} s")


def test_a_hung_triton_is_detected_killed_and_restarted(running: Running) -> None:
    running.colorize()
    os.kill(running.pid_of(r"bin/tritonserver"), signal.SIGSTOP)
    took = running.until_ok(running.colorize)
    running.stack.wait_for(r"supervisor: Triton did not answer 2 health checks: restarting", 5)
    print(f"Triton stopped (SIGSTOP): serving again after {took:.1f} s")


def test_a_dead_model_stub_is_reloaded_alone(running: Running) -> None:
    running.colorize("larsson16")
    triton = running.pid_of(r"bin/tritonserver")
    os.kill(running.pid_of(r"larsson16/1/model\.py"), signal.SIGKILL)
    took = running.until_ok(lambda: running.colorize("larsson16"))
    running.stack.wait_for(r"supervisor: model larsson16 a probe inference failed", 5)
    assert running.pid_of(r"bin/tritonserver") == triton, "one model reloaded, not the whole server"
    print(f"larsson16 stub killed: serving again after {took:.1f} s")


def test_a_hung_model_stub_is_reloaded_after_two_timed_out_probes(running: Running) -> None:
    # A stub that stops answering (a deadlock in model.py, say): the probes time out, and two in a row
    # make the supervisor reload that model (one slow answer does not), unless Triton's own check of
    # its stubs has called it unhealthy first, which fails the probe outright.
    running.colorize("larsson16")
    stub = running.pid_of(r"larsson16/1/model\.py")
    os.kill(stub, signal.SIGSTOP)
    try:
        took = running.until_ok(lambda: running.colorize("larsson16"))
    finally:
        with contextlib.suppress(ProcessLookupError):  # a reload replaces the stopped stub
            os.kill(stub, signal.SIGCONT)
    failed = r"supervisor: model larsson16 a probe inference failed: "
    running.stack.wait_for(failed + r"(.*\(2 in a row\)|Stub process .* is not healthy)", 5)
    print(f"larsson16 stub stopped: serving again after {took:.1f} s")


def test_a_killed_worker_is_started_again(running: Running) -> None:
    os.kill(running.pid_of(r"-m service\.restore"), signal.SIGKILL)
    running.stack.wait_for(r"supervisor: Restore worker exited with status -9: restarting", 30)
    result = running.restore()
    assert result.iterations_run == 3


def test_a_killed_redis_comes_back_with_its_jobs(running: Running) -> None:
    request = restore_pb2.RestoreRequest(
        image=SMALL, denoise=restore_pb2.DenoiseParams(sigma=25), fixed_iterations=2
    )
    with grpc.insecure_channel(running.target) as channel:
        job = restore_pb2_grpc.RestorerStub(channel).SubmitRestore(request, timeout=10).job_id
    time.sleep(1.5)  # the append-only file is synced once a second
    os.kill(running.pid_of(r"redis-server"), signal.SIGKILL)
    running.stack.wait_for(r"supervisor: Redis back in", 30)

    def watched() -> None:
        with grpc.insecure_channel(running.target) as channel:
            events = restore_pb2_grpc.RestorerStub(channel).WatchRestore(
                restore_pb2.WatchRestoreRequest(job_id=job), timeout=60
            )
            assert any(event.HasField("result") for event in events)

    running.until_ok(watched, 90)
    assert running.restore().iterations_run == 3, "a new job after the restart"


@pytest.fixture(scope="module")
def unsupervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A stack whose supervisor is off: what the gateway's health sees before anyone repairs it."""
    with _running(tmp_path_factory.mktemp("unsupervised"), "--no-supervise") as stack:
        yield stack


def _health(running: Running) -> int:
    with grpc.insecure_channel(running.target) as channel:
        request = health_pb2.HealthCheckRequest(service=COLORIZER)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)


def _wait_serving(running: Running, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _health(running) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "the gateway is not SERVING before the fault"
        time.sleep(0.2)


def _not_serving_within(running: Running, limit_s: float) -> float:
    """Seconds from now until the gateway's health says NOT_SERVING."""
    start = time.monotonic()
    with grpc.insecure_channel(running.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() - start < limit_s + 5:
            status = stub.Check(health_pb2.HealthCheckRequest(service=COLORIZER), timeout=2).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                return time.monotonic() - start
            time.sleep(0.1)
    pytest.fail(f"health still SERVING {limit_s + 5:.0f} s after the fault")


def test_health_sees_a_hung_triton_within_2_s_and_recovers_when_it_resumes(unsupervised: Running) -> None:
    triton = unsupervised.pid_of(r"bin/tritonserver")
    _wait_serving(unsupervised)
    os.kill(triton, signal.SIGSTOP)
    try:
        took = _not_serving_within(unsupervised, 2.0)
    finally:
        os.kill(triton, signal.SIGCONT)
    print(f"hung Triton: NOT_SERVING after {took:.1f} s")
    assert took <= 2.5
    unsupervised.until_ok(lambda: unsupervised.colorize("eccv16"), 30)


def test_health_sees_a_dead_model_stub_within_2_s(unsupervised: Running) -> None:
    _wait_serving(unsupervised)
    os.kill(unsupervised.pid_of(r"larsson16/1/model\.py"), signal.SIGKILL)
    took = _not_serving_within(unsupervised, 2.0)
    print(f"dead larsson16 stub: NOT_SERVING after {took:.1f} s")
    assert took <= 2.5  # 1 s poll + 1 s probe timeout, and the time a check takes
