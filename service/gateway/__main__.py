"""`python -m service.gateway`: the gateway alone, configured by `PRIORLAB_*` (service.gateway.settings).

Used where Triton runs elsewhere (the Dockerfile's gateway target). For the whole embedded
stack on one machine, `make run` uses `python -m service.launch.stack`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from service.gateway.admission import freeze_startup_heap
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.gateway.triton import TritonBackend


async def serve(settings: Settings) -> None:
    backend = TritonBackend(
        settings.triton_url,
        shared_memory=settings.triton_shared_memory,
        slots=settings.max_concurrent_colorize,
    )
    gateway = await create_server(settings, backend)
    freeze_startup_heap()
    print(f"priorlab gateway on {settings.host}:{gateway.port} (Triton {settings.triton_url})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="priorlab serve",
        description="The gateway alone. Configured by PRIORLAB_* variables (service/gateway/settings.py).",
    ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(Settings.from_env(os.environ)))


if __name__ == "__main__":
    main()
