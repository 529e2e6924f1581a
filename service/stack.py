"""`make run`: the embedded default stack on 127.0.0.1 — Triton (pytriton wheel) + the gateway.

Triton gets free ports and serves `model_repository/` with `configs/cpu.pbtxt`; the gateway talks
to it through system shared memory (same host). Ports are printed; Ctrl-C (or SIGTERM) stops
the gateway, then Triton by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path

from service.server import create_server
from service.settings import Settings
from service.triton import TritonBackend
from service.triton_launcher import TritonServer

log = logging.getLogger("priorlab.stack")


async def run(settings: Settings, repository: Path, workdir: Path) -> None:
    triton = TritonServer.start(repository, workdir / "triton")
    try:
        settings = dataclasses.replace(settings, triton_url=triton.grpc_url, triton_shared_memory=True)
        backend = TritonBackend(
            settings.triton_url, shared_memory=True, slots=settings.max_concurrent_colorize
        )
        gateway = await create_server(settings, backend)
        print(
            f"\npriorlab is up (Ctrl-C stops it):\n"
            f"  gateway gRPC   {settings.host}:{gateway.port}   (priorlab.v1.Colorizer, health, reflection)\n"
            f"  Triton gRPC    {triton.grpc_url}   HTTP 127.0.0.1:{triton.http_port}"
            f"   metrics 127.0.0.1:{triton.metrics_port}   (pid {triton.pid})\n"
            f"  try: .venv/bin/python -m service.client --target {settings.host}:{gateway.port}"
            " colorize IMAGE OUT.png\n",
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
        triton.stop()
        print(f"Triton (pid {triton.pid}) stopped", flush=True)


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
