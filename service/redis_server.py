"""Start and stop a local `redis-server` (the Debian package) for the embedded stack and the tests.

It binds 127.0.0.1 on a free port, keeps nothing on disk (no RDB snapshots, no AOF: the job bus holds
in-flight work only, and its results expire anyway) and runs in its own directory. Stopped by PID.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from service.triton_launcher import free_port


@dataclass
class RedisServer:
    """A running redis-server; use `RedisServer.start(...)`, then `.stop()`."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(cls, workdir: Path, *, port: int = 0, timeout_s: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).is_file():
            raise FileNotFoundError("redis-server is not installed: `make apt` installs the Debian package")
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log"), "--daemonize", "no"]
        # Own session: a terminal's Ctrl-C reaches only our parent, which stops Redis last (after the
        # workers have handed their jobs back).
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = cls(process, port, workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = (workdir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {process.returncode}: {log}")
            if server.ping():
                return server
            time.sleep(0.05)
        server.stop()
        raise TimeoutError(f"redis-server on port {port} did not answer PING within {timeout_s} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
