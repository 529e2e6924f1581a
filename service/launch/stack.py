"""`make run`: the embedded default stack on 127.0.0.1 — Triton (pytriton wheel), Redis, one Restore
worker and the gateway, in that order.

Triton gets free ports and serves `model_repository/` with `configs/cpu.pbtxt`; the gateway talks to
it through system shared memory (same host). A local `redis-server` (free port unless `--redis-port`,
append-only file with an fsync a second, `<workdir>/redis/`) is the Restore job bus unless
`PRIORLAB_REDIS_URL` names another; one worker process serves it. The gateway's Prometheus endpoint
is on `--metrics-port`, the HTTP/JSON API and the web page on `--http-port` (8080). Ports are printed.

Every process is registered for shutdown the moment it has started, so a failure at any stage, or
Ctrl-C / SIGTERM during start-up, stops what is already running (in reverse order, each by PID: the
worker hands its job back before Redis goes), removes Triton's shared-memory regions, and prints
the real cause with the last lines of that process's own log. Exit status: 0 after a clean stop,
1 when start-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from service.bus.jobs import redacted_url
from service.gateway.admission import freeze_startup_heap
from service.gateway.auth import TokenTable
from service.gateway.server import GatewayServer, create_server
from service.gateway.settings import Settings
from service.gateway.triton import TritonBackend
from service.launch.process import ManagedProcess, StartupError
from service.launch.redis import RedisServer
from service.launch.supervisor import Supervisor
from service.launch.triton import TritonServer
from service.launch.worker import spawn_worker, wait_joined

log = logging.getLogger("priorlab.stack")

METRICS_PORT_DEFAULT = 9464  # the Prometheus exporter port OpenTelemetry also uses; --metrics-port 0 = off
HTTP_PORT_DEFAULT = 8080  # the HTTP/JSON API and the web page; --http-port 0 = off
CLIENT = ".venv/bin/priorlab"
# Triton and the worker run at this niceness, in this process's session (service.launch.process):
# the gateway in this process answers refusals, health checks and progress before bulk compute.
COMPUTE_NICE_DEFAULT = 10


@dataclasses.dataclass(frozen=True)
class StackOptions:
    repository: Path
    workdir: Path
    redis_port: int = 0  # 0 = a free port
    supervise: bool = True  # restart a crashed or hung Triton, Redis or worker (service.launch.supervisor)
    compute_nice: int = COMPUTE_NICE_DEFAULT  # Triton's and the worker's; 0 = the gateway's own


def _private_regions(prefix: str, done: threading.Event, period_s: float = 0.5) -> None:
    """Takes other users' access to Triton's Python-backend shared-memory regions (`/dev/shm/<prefix>*`).

    The stubs create them 0644 whatever the umask (measured with umask 077: they set the mode themselves),
    so any local user could read the tensors. Each region is made 0600 within `period_s` of appearing
    (model load, stub restart); a user who opens one within that window keeps it, so on a machine shared
    with untrusted users run Triton as its own user or container (README "Security").
    """
    while not done.wait(period_s):
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            with contextlib.suppress(OSError):  # gone meanwhile
                if stat.S_IMODE(region.stat().st_mode) & 0o077:
                    region.chmod(0o600)


def _say(message: str) -> None:
    print(message, flush=True)


def _stop(stop: Callable[[], None], what: Callable[[], str]) -> None:
    """Stops one process and says so (`what` is asked after the stop: a restart changes the PID)."""
    stop()
    _say(f"{what()} stopped")


@contextlib.contextmanager
def started(settings: Settings, options: StackOptions) -> Iterator[Settings]:
    """Starts Triton, Redis and the worker; yields the gateway's settings; stops them all on exit."""
    with contextlib.ExitStack() as running:
        try:
            _say("starting Triton (loading the models takes a while)…")
            triton = TritonServer.start(
                options.repository, options.workdir / "triton", nice=options.compute_nice
            )
            running.callback(_stop, triton.stop, lambda: f"Triton (pid {triton.pid})")
            regions_done = threading.Event()
            threading.Thread(
                target=_private_regions, args=(triton.shm_prefix, regions_done), daemon=True
            ).start()
            running.callback(regions_done.set)

            redis_url, redis = settings.redis_url, None
            if not redis_url:
                # requirepass with a fresh random password: other local users cannot reach the job bus.
                password = secrets.token_hex(24)
                redis = RedisServer.start(
                    options.workdir / "redis", port=options.redis_port, persistent=True, password=password
                )
                running.callback(_stop, redis.stop, lambda: f"Redis (pid {redis.pid})")
                redis_url = redis.url

            name = f"{socket.gethostname()}-stack{os.getpid()}"
            _say("starting a Restore worker (importing torch)…")

            def start_worker(append: bool = True) -> ManagedProcess:
                return spawn_worker(
                    redis_url, options.workdir / "worker.log", name, append=append, nice=options.compute_nice
                )

            supervisor = Supervisor(triton, redis, start_worker(append=False), start_worker)
            # SIGTERM makes the worker requeue its running job; the grace covers one CPU DIP iteration.
            running.callback(
                _stop,
                lambda: supervisor.worker.stop(30.0),
                lambda: f"Restore worker (pid {supervisor.worker.pid})",
            )
            wait_joined(supervisor.worker, redis_url, name)
            if options.supervise:
                supervisor.start()
                running.callback(supervisor.stop)  # first on the way out: no restart while stopping

            yield dataclasses.replace(
                settings, triton_url=triton.grpc_url, triton_shared_memory=True, redis_url=redis_url
            )
        finally:
            # A second Ctrl-C must not cut the stop short and leave a process behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


async def serve(settings: Settings) -> None:
    """The gateway, in this process, until SIGINT or SIGTERM. One that comes while the gateway starts
    lets the start finish (binding ports: short), stops it again and raises KeyboardInterrupt."""
    # Before the first await: from here on both signals only set `stop`. Left to asyncio.run's own SIGINT
    # handler, a Ctrl-C during the start cancels it, and a call that swallows that cancel (3.11's
    # wait_for, cpython#86296) would leave the stack serving with its Ctrl-C spent.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = await start_gateway(settings)
    if stop.is_set():
        await gateway.stop(0)
        raise KeyboardInterrupt
    freeze_startup_heap()  # the collector's full passes no longer stall the loop (admission.py)
    target = f"{settings.host}:{gateway.port}"
    metrics = f"http://{settings.host}:{settings.metrics_port}/metrics" if settings.metrics_port else "off"
    web = "off"
    if gateway.http is not None:
        page = f"{gateway.http.scheme}://{settings.host}:{gateway.http.port}/"
        web = f"{page}   (and the HTTP/JSON API: {page}openapi.json)"
    _say(
        f"\npriorlab is up (Ctrl-C stops it):\n"
        f"  gateway gRPC   {target}   (priorlab.v1.Colorizer, priorlab.v1.Restorer, health, reflection)\n"
        f"  web page       {web}\n"
        f"  metrics        {metrics}\n"
        f"  Triton gRPC    {settings.triton_url}\n"
        f"  Redis          {redacted_url(settings.redis_url)}\n"
        f"  try: {CLIENT} colorize samples/aitzgorri.jpg /tmp/aitzgorri-colorized.jpg --target {target}\n"
    )
    await stop.wait()
    _say("stopping…")
    await gateway.stop()
    _say("gateway stopped")


async def start_gateway(settings: Settings) -> GatewayServer:
    """The gateway on Triton's client (closed again when the start fails)."""
    backend = TritonBackend(settings.triton_url, shared_memory=True, slots=settings.max_concurrent_colorize)
    try:
        return await create_server(settings, backend)
    except BaseException:
        await backend.close()
        raise


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Until the gateway's loop installs its handlers, SIGTERM unwinds start-up like Ctrl-C does.
    raise KeyboardInterrupt


def run(settings: Settings, options: StackOptions) -> int:
    # Ctrl-C stops the stack (its contract), also when it was started with SIGINT ignored, which is how
    # a shell without job control starts a background command (`make run &` in a script, CI runners):
    # Python then leaves SIGINT ignored, and an interrupt sent to the stack would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    # What the stack and its children create is this user's only: logs, Redis's config (its password)
    # and append-only file. (Not Triton's stub regions: `_private_regions` sees to those.)
    os.umask(0o077)
    try:
        with started(settings, options) as gateway_settings:
            asyncio.run(serve(gateway_settings))
    except StartupError as e:
        _say(f"\npriorlab failed to start: {e}\neverything it had started is stopped.")
        return 1
    except OSError as e:  # the gateway's port (or the metrics port) is taken
        _say(f"\npriorlab failed to start: {e}\neverything it had started is stopped.")
        return 1
    except KeyboardInterrupt:
        _say("interrupted; everything started is stopped.")
        return 130
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.launch.stack", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path(".run"), help="logs and Redis data")
    parser.add_argument("--port", type=int, help="gateway port (default PRIORLAB_PORT or 50051)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"gateway /metrics port (default PRIORLAB_METRICS_PORT or {METRICS_PORT_DEFAULT}; 0 = off)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help=f"HTTP API and web page port (default PRIORLAB_HTTP_PORT or {HTTP_PORT_DEFAULT}; 0 = off)",
    )
    parser.add_argument("--redis-port", type=int, default=0, help="local Redis port (default: a free one)")
    parser.add_argument(
        "--no-supervise", action="store_true", help="do not restart a crashed or hung Triton, Redis or worker"
    )
    parser.add_argument(
        "--compute-nice",
        type=int,
        default=COMPUTE_NICE_DEFAULT,
        help=f"niceness of Triton and the worker, below the gateway (default {COMPUTE_NICE_DEFAULT}; 0-19)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.compute_nice <= 19:
        parser.error(f"--compute-nice must be 0..19, got {args.compute_nice}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as e:
        sys.exit(f"priorlab: {e}")
    metrics_port = args.metrics_port
    if metrics_port is None:
        from_env = "PRIORLAB_METRICS_PORT" in os.environ
        metrics_port = settings.metrics_port if from_env else METRICS_PORT_DEFAULT
    http_port = args.http_port
    if http_port is None:
        http_port = settings.http_port if "PRIORLAB_HTTP_PORT" in os.environ else HTTP_PORT_DEFAULT
    try:  # a bad combination (say a key without its certificate) or token file fails here, before any start
        settings = dataclasses.replace(
            settings,
            port=settings.port if args.port is None else args.port,
            metrics_port=metrics_port,
            http_port=http_port,
        )
        if settings.auth_tokens_file:
            TokenTable.load(settings.auth_tokens_file)
    except (ValueError, OSError) as e:
        sys.exit(f"priorlab: {e}")
    options = StackOptions(
        args.repository,
        args.workdir,
        args.redis_port,
        supervise=not args.no_supervise,
        compute_nice=args.compute_nice,
    )
    sys.exit(run(settings, options))


if __name__ == "__main__":
    main()
