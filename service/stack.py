"""`make run`: the embedded default stack on 127.0.0.1 — Triton (pytriton wheel), Redis, one Restore
worker and the gateway.

Triton gets free ports and serves `model_repository/` with `configs/cpu.pbtxt`; the gateway talks
to it through system shared memory (same host). A local `redis-server` (free port, no persistence,
`.run/redis/`) is the Restore job bus unless `PRIORLAB_REDIS_URL` names another; one worker process
(`python -m service.restore.worker`) serves it. Ports are printed; Ctrl-C (or SIGTERM) stops the
gateway, the worker (which requeues a running job), Redis and Triton, each by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from service.redis_server import RedisServer
from service.server import create_server
from service.settings import Settings
from service.triton import TritonBackend
from service.triton_launcher import TritonServer

log = logging.getLogger("priorlab.stack")


async def run(settings: Settings, repository: Path, workdir: Path) -> None:
    triton = TritonServer.start(repository, workdir / "triton")
    redis = None if settings.redis_url else RedisServer.start(workdir / "redis")
    worker: subprocess.Popen[bytes] | None = None
    try:
        redis_url = settings.redis_url or (redis.url if redis is not None else "")
        # Own session, so Ctrl-C reaches the stack only and the worker is stopped (and requeues) before Redis.
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.restore.worker", "--redis", redis_url], start_new_session=True
        )
        settings = dataclasses.replace(
            settings, triton_url=triton.grpc_url, triton_shared_memory=True, redis_url=redis_url
        )
        backend = TritonBackend(
            settings.triton_url, shared_memory=True, slots=settings.max_concurrent_colorize
        )
        gateway = await create_server(settings, backend)
        target = f"{settings.host}:{gateway.port}"
        client = f".venv/bin/python -m service.client --target {target}"
        local = f"   (pid {redis.pid}, no persistence)" if redis is not None else ""
        print(
            f"\npriorlab is up (Ctrl-C stops it):\n"
            f"  gateway gRPC   {target}   (priorlab.v1.Colorizer, priorlab.v1.Restorer, health, reflection)\n"
            f"  Triton gRPC    {triton.grpc_url}   HTTP 127.0.0.1:{triton.http_port}"
            f"   metrics 127.0.0.1:{triton.metrics_port}   (pid {triton.pid})\n"
            f"  Redis          {redis_url}{local}\n"
            f"  worker         pid {worker.pid}   (more: python -m service.restore.worker --redis URL)\n"
            f"  try: {client} colorize IMAGE OUT.png\n"
            f"       {client} restore denoise IMAGE OUT.png --sigma 25\n",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("stopping…", flush=True)
        await gateway.stop()
    finally:
        if worker is not None:
            _stop_process(worker, "Restore worker")
        if redis is not None:
            redis.stop()
            print(f"Redis (pid {redis.pid}) stopped", flush=True)
        triton.stop()
        print(f"Triton (pid {triton.pid}) stopped", flush=True)


def _stop_process(process: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM (a worker then requeues its running job), SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    print(f"{name} (pid {process.pid}) stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.stack", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path(".run"))
    parser.add_argument("--port", type=int, help="gateway port (default PRIORLAB_PORT or 50051)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env(os.environ)
    if args.port is not None:
        settings = dataclasses.replace(settings, port=args.port)
    asyncio.run(run(settings, args.repository, args.workdir))


if __name__ == "__main__":
    main()
