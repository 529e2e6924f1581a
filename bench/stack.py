"""The processes under test: one tritonserver and gateway processes, on free 127.0.0.1 ports.

Everything started here is stopped by PID (`Stack.close`, called from a `finally`), the way
tests/integration starts them: Triton through `service.triton_launcher`, gateways as
`python -m service` configured by `PRIORLAB_*` variables.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.config import MODEL_REPOSITORY, ROOT
from service.settings import Settings
from service.triton_launcher import TritonServer, free_port

log = logging.getLogger(__name__)

GATEWAY_READY_S = 60.0


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    target: str
    shared_memory: bool
    decode_in_triton: bool

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def supports_decode_in_triton() -> bool:
    """Whether this checkout's gateway has the `PRIORLAB_DECODE_IN_TRITON` setting."""
    return "decode_in_triton" in {f.name for f in dataclasses.fields(Settings)}


def _wait_serving(gateway: Gateway, log_path: Path) -> None:
    deadline = time.monotonic() + GATEWAY_READY_S
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited {gateway.process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with grpc.insecure_channel(gateway.target) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gateway {gateway.target} not serving after {GATEWAY_READY_S:.0f} s")


@dataclass
class Stack:
    """Lazily started processes, shared by the parts of one run.

    Their working files (Triton's copied backends, logs) live in a temporary folder outside the
    checkout; `close` keeps the logs in `logs`.
    """

    logs: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="priorlab-bench-")))
    triton: TritonServer | None = None
    gateways: dict[tuple[bool, bool], Gateway] = field(default_factory=dict)

    def triton_server(self) -> TritonServer:
        if self.triton is None:
            self.triton = TritonServer.start(MODEL_REPOSITORY, self.workdir / "triton")
            log.info("Triton pid %d on %s", self.triton.pid, self.triton.grpc_url)
        return self.triton

    def gateway(self, *, shared_memory: bool = True, decode_in_triton: bool = False) -> Gateway:
        """A gateway on this stack's Triton; the default is the `make run` shape (shm, decode here)."""
        key = (shared_memory, decode_in_triton)
        if key in self.gateways:
            return self.gateways[key]
        if decode_in_triton and not supports_decode_in_triton():
            raise RuntimeError("this gateway has no PRIORLAB_DECODE_IN_TRITON setting")
        triton = self.triton_server()
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PRIORLAB_PORT": str(port),
            "PRIORLAB_TRITON_URL": triton.grpc_url,
            "PRIORLAB_TRITON_SHARED_MEMORY": "1" if shared_memory else "0",
            "PRIORLAB_HEALTH_POLL_S": "0.5",
        }
        if decode_in_triton:
            env["PRIORLAB_DECODE_IN_TRITON"] = "1"
        log_path = self.workdir / f"gateway-shm{int(shared_memory)}-graph{int(decode_in_triton)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "service"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the harness, which stops it by PID
            )
        gateway = Gateway(process, f"127.0.0.1:{port}", shared_memory, decode_in_triton)
        self.gateways[key] = gateway
        _wait_serving(gateway, log_path)
        log.info("gateway pid %d on %s (shm=%s, decode_in_triton=%s)", process.pid, gateway.target, *key)
        return gateway

    def stop_gateway(self, gateway: Gateway) -> None:
        gateway.stop()
        self.gateways = {k: g for k, g in self.gateways.items() if g is not gateway}

    def close(self) -> None:
        for gateway in list(self.gateways.values()):
            gateway.stop()
        self.gateways.clear()
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        self.logs.mkdir(parents=True, exist_ok=True)
        for log_file in self.workdir.rglob("*.log"):
            shutil.copy2(log_file, self.logs / log_file.name)
        shutil.rmtree(self.workdir, ignore_errors=True)
