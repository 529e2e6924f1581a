"""Start and stop a local `redis-server` (the Debian package) for the embedded stack and the tests.

It binds 127.0.0.1 on a free port (or the one asked for) and runs in its own directory, given to
Redis as an absolute path: Redis applies `--dir` first and then opens `--logfile` relative to it,
so a relative work dir would make it look for `.run/redis/.run/redis/redis.log` and exit.

By default nothing is kept on disk (the tests' bus holds in-flight work only). `persistent=True`
turns on the append-only file with an fsync every second, so a Redis restart keeps the jobs (at
most the last second of writes is lost); `make run` uses it.

`password` turns on Redis's `requirepass` (`make run` makes a random one per run): it is written to
`<workdir>/redis.conf` (mode 0600, handed to redis-server as its config file, so it is never on a
command line) and is part of `url` (`redis://:<password>@127.0.0.1:<port>/0`), the URL the gateway and
the worker are given. Without it, any local user could reach the job bus on the loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from service.launch.process import ManagedProcess, StartupError, free_port


@dataclass
class RedisServer:
    """A running redis-server; use `RedisServer.start(...)`, then `.stop()`."""

    handle: ManagedProcess
    port: int
    workdir: Path
    command: list[str]  # kept for `restart`: same port, same directory (and append-only file)
    password: str = ""  # requirepass; empty = none

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.handle.pid

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        port: int = 0,
        persistent: bool = False,
        password: str = "",
        timeout_s: float = 15.0,
    ) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).is_file():
            raise StartupError("redis-server is not installed: `make apt` installs the Debian package")
        workdir = workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        args = [binary]
        if password:
            if not password.isalnum():
                raise ValueError("the Redis password must be letters and digits (it goes into a URL)")
            args.append(str(_private_config(workdir / "redis.conf", f"requirepass {password}\n")))
        args += ["--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
        # No --logfile: Redis logs to stdout, which the handle writes to redis.log.
        args += ["--dir", str(workdir), "--daemonize", "no"]
        handle = ManagedProcess.spawn("redis-server", args, workdir / "redis.log")
        server = cls(handle, port, workdir, args, password)
        server._wait_ready(timeout_s)
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        try:
            self.handle.wait_until(self.ping, timeout_s, poll_s=0.05)
        except BaseException:
            self.stop()
            raise

    def restart(self, timeout_s: float = 15.0) -> None:
        """The same command again; with `persistent`, Redis replays its append-only file."""
        self.stop()
        log_path = self.handle.log_path
        self.handle = ManagedProcess.spawn(
            "redis-server", self.command, log_path.with_suffix(".restarted.log")
        )
        self._wait_ready(timeout_s)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    secret = self.password.encode()
                    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                    if not _reply(s).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return _reply(s).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.handle.stop(10.0)


def _reply(s: socket.socket) -> bytes:
    """One line of a Redis reply (the short ones `ping` reads)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        data += chunk
    return data


def _private_config(path: Path, text: str) -> Path:
    """Writes `text` to `path`, readable and writable by this user only (also if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path
