"""The processes under test: one tritonserver and gateway processes, on free 127.0.0.1 ports.

Everything started here is stopped by PID (`Stack.close`, called from a `finally`), the way
tests/integration starts them: through `service.launch` (Triton, and gateways as
`python -m service.gateway` configured by `PRIORLAB_*` variables).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.config import MODEL_REPOSITORY, ROOT
from service.gateway.settings import Settings
from service.launch.gateway import GatewayProcess, start_gateway
from service.launch.stack import COMPUTE_NICE_DEFAULT
from service.launch.triton import TritonServer

log = logging.getLogger(__name__)


def supports_decode_in_triton() -> bool:
    """Whether this checkout's gateway has the `PRIORLAB_DECODE_IN_TRITON` setting."""
    return "decode_in_triton" in {f.name for f in dataclasses.fields(Settings)}


@dataclass
class Stack:
    """Lazily started processes, shared by the parts of one run.

    Their working files (Triton's copied backends, logs) live in a temporary folder outside the
    checkout; `close` keeps the logs in `logs`.
    """

    logs: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="priorlab-bench-")))
    triton: TritonServer | None = None
    gateways: dict[tuple[bool, bool], GatewayProcess] = field(default_factory=dict)
    triton_nice: int = COMPUTE_NICE_DEFAULT  # as make run: Triton below the gateway (service.launch.process)

    def triton_server(self) -> TritonServer:
        if self.triton is None:
            self.triton = TritonServer.start(MODEL_REPOSITORY, self.workdir / "triton", nice=self.triton_nice)
            log.info("Triton pid %d on %s", self.triton.pid, self.triton.grpc_url)
        return self.triton

    def gateway(self, *, shared_memory: bool = True, decode_in_triton: bool = False) -> GatewayProcess:
        """A gateway on this stack's Triton; the default is the `make run` shape (shm, decode here)."""
        key = (shared_memory, decode_in_triton)
        if key in self.gateways:
            return self.gateways[key]
        if decode_in_triton and not supports_decode_in_triton():
            raise RuntimeError("this gateway has no PRIORLAB_DECODE_IN_TRITON setting")
        triton = self.triton_server()
        settings = {
            "triton_url": triton.grpc_url,
            "triton_shared_memory": "1" if shared_memory else "0",
            "health_poll_s": "0.5",
        }
        if decode_in_triton:
            settings["decode_in_triton"] = "1"
        name = f"gateway-shm{int(shared_memory)}-graph{int(decode_in_triton)}"
        gateway = start_gateway(settings, self.workdir, name=name, cwd=ROOT)
        self.gateways[key] = gateway
        log.info("gateway pid %d on %s (shm=%s, decode_in_triton=%s)", gateway.pid, gateway.target, *key)
        return gateway

    def stop_gateway(self, gateway: GatewayProcess) -> None:
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
