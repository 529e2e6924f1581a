"""Start and stop a local tritonserver from the `nvidia-pytriton` wheel (CPU hosts, no Docker).

The recipe of docs/serving.md §6: copy the wheel's `backends/` to a writable
work dir, put the Python-backend stub for this interpreter into `backends/python/`, link the
wheel's bundled libs and this interpreter's LIBDIR (the stub links libpython3.X.so), put the
venv's `bin` first on PATH (the stub's embedded Python then sees the venv's site-packages) and
bind 127.0.0.1 only. Every instance gets free ports and its own shared-memory prefix, so tests
can run several; it is stopped by PID (`service.launch.process`) and its leaked shm regions are
removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.launch.process import ManagedProcess, StartupError, free_port

log = logging.getLogger(__name__)


def _pytriton_dir() -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    root = site / "pytriton" / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise StartupError(f"no tritonserver in {root}: is nvidia-pytriton installed in this environment?")
    return root


@dataclass
class TritonServer:
    """A running tritonserver process; use `TritonServer.start(...)`, then `.stop()`."""

    handle: ManagedProcess
    grpc_port: int
    http_port: int
    metrics_port: int
    shm_prefix: str
    workdir: Path
    command: list[str]  # kept for `restart`: the same ports, repository and shm prefix
    env: dict[str, str]
    nice: int = 0  # its niceness and its session's (service.launch.process), kept for `restart`

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.handle.pid

    @classmethod
    def start(
        cls,
        repository: Path,
        workdir: Path,
        *,
        config_name: str = "cpu",
        ready_timeout_s: float = 120.0,
        extra_args: tuple[str, ...] = (),
        nice: int = 0,
    ) -> TritonServer:
        """`nice` > 0 runs Triton (the stubs it forks, its restarts) below the gateway's priority
        (`ManagedProcess.spawn`: the process and its session)."""
        root = _pytriton_dir()
        # Absolute: Triton is given these paths, and the stack's default work dir is relative.
        workdir = workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        backends = workdir / "backends"
        shutil.rmtree(backends, ignore_errors=True)
        shutil.copytree(root / "backends", backends)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(
            root / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python"
        )

        site = Path(sysconfig.get_paths()["purelib"])
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(site / "nvidia_pytriton.libs"), libdir, env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.setdefault("OMP_NUM_THREADS", "2")

        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        shm_prefix = f"priorlab_{uuid.uuid4().hex[:10]}_"
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={repository.resolve()}",
            f"--backend-directory={backends}",
            f"--model-config-name={config_name}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            "--allow-metrics=true",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            "--exit-timeout-secs=10",
            # Explicit control, every model loaded at start: one model can then be reloaded alone.
            "--model-control-mode=explicit",
            "--load-model=*",
            "--log-verbose=0",
            *extra_args,
        ]
        handle = ManagedProcess.spawn("tritonserver", args, workdir / "triton.log", env=env, nice=nice)
        server = cls(handle, grpc_port, http_port, metrics_port, shm_prefix, workdir, args, env, nice)
        server._wait_ready(ready_timeout_s)
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        try:
            self.handle.wait_until(self.is_ready, timeout_s, poll_s=0.25)
        except BaseException:
            self.stop()
            raise
        log.info("tritonserver pid %d ready: grpc %s, http %d", self.pid, self.grpc_url, self.http_port)

    def restart(self, *, grace_s: float = 2.0, ready_timeout_s: float = 120.0) -> None:
        """Stops what is left of it (a crashed or hung server: a short grace) and starts the same
        command again: clients keep their URLs, and the old stubs and shm regions are gone first."""
        self.stop(grace_s)
        log_path = self.handle.log_path
        self.handle = ManagedProcess.spawn(
            "tritonserver", self.command, log_path, env=self.env, append=True, nice=self.nice
        )
        self._wait_ready(ready_timeout_s)

    def reload_model(self, name: str, timeout_s: float = 60.0) -> None:
        """Unloads and loads `name` (a fresh Python-backend stub): Triton 2.51 does not restart a dead
        stub by itself, keeps reporting the model ready, and treats `load` of an unchanged loaded
        model as a no-op, hence the unload first."""
        for action in ("unload", "load"):
            url = f"http://127.0.0.1:{self.http_port}/v2/repository/models/{name}/{action}"
            request = urllib.request.Request(url, data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                reply.read()

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        return self.handle.log_tail(lines)

    def stop(self, timeout_s: float = 15.0) -> None:
        # (also after a crash: the group sweep takes the orphaned stubs)
        """Stop by PID (Triton drains; its stubs are swept with its group), then clean its shm."""
        self.handle.stop(timeout_s)
        # Stubs that died mid-launch leak their regions (docs/serving.md §1.5).
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
