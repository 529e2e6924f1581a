"""Chaos: faults injected into a running `make run` stack, and how long it takes to notice and recover.

    make chaos   (= .venv/bin/priorlab chaos)   # every fault once -> bench/results/chaos.{json,md}

One stack (`priorlab stack`, the `make run` entry point, free ports) for the whole run. Before each
fault a Restore job is submitted; each fault is one signal to one process of the stack, by PID:

| fault | what is done |
|---|---|
| Triton killed | SIGKILL to tritonserver |
| Triton hung | SIGSTOP to tritonserver (the supervisor must kill it: a stopped process never answers) |
| model stub killed | SIGKILL to one model's Python-backend stub (Triton keeps calling the model ready) |
| model stub hung | SIGSTOP to that stub (its probes time out, or Triton calls it unhealthy: reloaded) |
| worker killed | SIGKILL to the Restore worker while it runs a job |
| Redis killed | SIGKILL to redis-server with a job in flight |

Measured per fault: **detect** — until the gateway's health says NOT_SERVING (Colorize faults; the
Restore faults are seen by the supervisor's log line), **recover** — until a call of the affected
kind succeeds again, **jobs lost** — submitted jobs that never reached a result (goal: 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.config import RESULTS, ROOT
from bench.machine import describe, load_average
from service.launch.process import ManagedProcess, free_port
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2, restore_pb2_grpc

PHOTO = ROOT / "samples" / "aitzgorri.jpg"
SMALL = ROOT / "samples" / "aitzgorri_96.png"
UP_S = 240.0


@dataclass
class Outcome:
    fault: str
    detect_s: float | None
    recover_s: float
    jobs_submitted: int
    jobs_lost: int
    supervisor: str


class Chaos:
    def __init__(self, workdir: Path, recover_limit_s: float) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "service.launch.stack", "--port", str(self.port)]
        command += ["--metrics-port", "0", "--http-port", "0", "--workdir", str(workdir)]
        self.stack = ManagedProcess.spawn("stack", command, workdir / "stack.log", cwd=ROOT)
        self.stack.wait_until(lambda: "priorlab is up" in self._log(), UP_S, poll_s=0.5)
        self.target = f"127.0.0.1:{self.port}"
        self.limit_s = recover_limit_s
        self.photo, self.small = PHOTO.read_bytes(), SMALL.read_bytes()

    def _log(self) -> str:
        return self.stack.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.stack.process.send_signal(signal.SIGINT)  # the stack stops its children by PID
        self.stack.stop(60.0)

    # -- the stack's processes, found by parentage (restarts keep them children of the stack) --
    def pid_of(self, pattern: str) -> int:
        children: dict[int, list[int]] = {}
        commands: dict[int, str] = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        todo, found = [self.stack.pid], []
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                todo.append(child)
                if re.search(pattern, commands.get(child, "")):
                    found.append(child)
        if len(found) != 1:
            raise RuntimeError(f"{len(found)} processes match {pattern!r} in the stack")
        return found[0]

    # -- calls --
    def colorize(self, model: str = "eccv16") -> None:
        request = colorize_pb2.ColorizeRequest(image=self.photo, model=model, working_size=64)
        with grpc.insecure_channel(self.target) as channel:
            colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)

    def submit(self, iterations: int = 30) -> str:
        request = restore_pb2.RestoreRequest(
            image=self.small, denoise=restore_pb2.DenoiseParams(sigma=25), fixed_iterations=iterations
        )
        with grpc.insecure_channel(self.target) as channel:
            return str(restore_pb2_grpc.RestorerStub(channel).SubmitRestore(request, timeout=10).job_id)

    def finished(self, job: str) -> bool:
        """Whether the job reached its result (follows it to the end)."""
        with grpc.insecure_channel(self.target) as channel:
            events = restore_pb2_grpc.RestorerStub(channel).WatchRestore(
                restore_pb2.WatchRestoreRequest(job_id=job), timeout=self.limit_s
            )
            return any(event.HasField("result") for event in events)

    def not_serving(self) -> bool:
        try:
            with grpc.insecure_channel(self.target) as channel:
                request = health_pb2.HealthCheckRequest(service="priorlab.v1.Colorizer")
                status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
        except grpc.RpcError:
            return True
        return bool(status == health_pb2.HealthCheckResponse.NOT_SERVING)

    def until(self, check: Callable[[], object], start: float) -> float:
        while time.monotonic() - start < self.limit_s:
            try:
                if check() is not False:
                    return time.monotonic() - start
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no recovery within {self.limit_s:.0f} s")

    def inject(self, fault: str, pattern: str, sig: signal.Signals, call: Callable[[], object]) -> Outcome:
        self.until(call, time.monotonic())  # healthy before
        jobs = [self.submit()]
        time.sleep(1.5)  # the job is running, and Redis has synced its append-only file
        lines_before = len(self._log().splitlines())
        start = time.monotonic()
        os.kill(self.pid_of(pattern), sig)
        detect = None
        if pattern != "redis-server" and "worker" not in fault:
            detect = self.until(self.not_serving, start)
        recover = self.until(call, start)
        lost = sum(not self._finished_quietly(job) for job in jobs)
        said = [line for line in self._log().splitlines()[lines_before:] if line.startswith("supervisor:")]
        return Outcome(fault, detect, recover, len(jobs), lost, " / ".join(said))

    def _finished_quietly(self, job: str) -> bool:
        try:
            return self.finished(job)
        except grpc.RpcError:
            return False


FAULTS = (
    ("Triton killed (SIGKILL)", r"bin/tritonserver", signal.SIGKILL, "colorize"),
    ("Triton hung (SIGSTOP)", r"bin/tritonserver", signal.SIGSTOP, "colorize"),
    ("model stub killed (larsson16)", r"larsson16/1/model\.py", signal.SIGKILL, "larsson16"),
    ("model stub hung (larsson16, SIGSTOP)", r"larsson16/1/model\.py", signal.SIGSTOP, "larsson16"),
    ("Restore worker killed mid-job", r"-m service\.restore", signal.SIGKILL, "restore"),
    ("Redis killed with a job in flight", r"redis-server", signal.SIGKILL, "restore"),
)


def markdown(outcomes: list[Outcome], machine: dict[str, object], load: float) -> str:
    lines = [
        "# Chaos: faults in a running stack",
        "",
        f"`python -m bench.chaos` on {machine.get('cpu', '?')}, 1-minute load average {load}. Goals: "
        "a Colorize fault is seen by the gateway's health within 2 s; every submitted job finishes (0 lost).",
        "",
        "| fault | detected (health NOT_SERVING) | recovered (a call succeeds) | jobs lost / submitted "
        "| what the supervisor did |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        detect = "—" if o.detect_s is None else f"{o.detect_s:.1f} s"
        cells = [o.fault, detect, f"{o.recover_s:.1f} s", f"{o.jobs_lost} / {o.jobs_submitted}", o.supervisor]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _call(chaos: Chaos, kind: str) -> Callable[[], object]:
    """The call that shows the fault's service is back: a tiny Restore job, or a Colorize."""
    if kind == "restore":
        return lambda: chaos.finished(chaos.submit(2))
    model = "eccv16" if kind == "colorize" else kind
    return lambda: chaos.colorize(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="priorlab chaos", description=__doc__)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where chaos.{json,md} go")
    parser.add_argument("--recover-limit", type=float, default=300.0, help="seconds before a fault fails")
    args = parser.parse_args(argv)
    out = args.out
    work = Path(tempfile.mkdtemp(prefix="priorlab-chaos-"))  # the stack's logs, kept for a look
    chaos = Chaos(work, recover_limit_s=args.recover_limit)
    outcomes: list[Outcome] = []
    try:
        for fault, pattern, sig, kind in FAULTS:
            outcome = chaos.inject(fault, pattern, sig, _call(chaos, kind))
            print(f"{outcome.fault}: detect {outcome.detect_s}, recover {outcome.recover_s:.1f} s, "
                  f"lost {outcome.jobs_lost}/{outcome.jobs_submitted}", flush=True)  # fmt: skip
            outcomes.append(outcome)
    finally:
        chaos.close()
    machine = describe()
    out.mkdir(parents=True, exist_ok=True)
    document = {"machine": machine, "faults": [asdict(o) for o in outcomes]}
    (out / "chaos.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / "chaos.md").write_text(markdown(outcomes, machine, load_average()))
    print(f"wrote {out / 'chaos.md'}; the stack's logs are in {work}")
    return 0 if all(o.jobs_lost == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
