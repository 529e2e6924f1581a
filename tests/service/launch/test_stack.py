"""`serve`, make run's gateway phase: a Ctrl-C while the gateway starts is never lost.

The whole stack's Ctrl-C paths run for real in tests/integration/test_first_hour.py; this pins the
one window those hit only by chance, with the gateway's start replaced by a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.gateway.settings import Settings
from service.launch import stack


@dataclass
class FakeGateway:
    port: int = 50051
    http: None = None
    stops: list[float] = field(default_factory=list)

    async def stop(self, grace_s: float = 5.0) -> None:
        self.stops.append(grace_s)


def test_a_ctrl_c_during_the_gateway_start_stops_it_even_if_the_start_swallows_a_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = FakeGateway()

    async def start_swallowing_cancels(settings: Settings) -> FakeGateway:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, while the start is under way
        with contextlib.suppress(asyncio.CancelledError):  # as 3.11's wait_for can (cpython#86296)
            await asyncio.sleep(0.3)
        # Should the Ctrl-C be lost, a second one later ends serve() normally, and the test fails.
        asyncio.get_running_loop().call_later(3.0, os.kill, os.getpid(), signal.SIGINT)
        return gateway

    monkeypatch.setattr(stack, "start_gateway", start_swallowing_cancels)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(stack.serve(Settings(port=0)))
    assert gateway.stops == [0]


def test_a_ctrl_c_once_up_stops_the_gateway_and_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = FakeGateway()

    async def start(settings: Settings) -> FakeGateway:
        asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
        return gateway

    monkeypatch.setattr(stack, "start_gateway", start)
    asyncio.run(stack.serve(Settings(port=0)))
    assert len(gateway.stops) == 1


def test_ctrl_c_stops_a_stack_started_with_sigint_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python keeps it so.
    @contextlib.contextmanager
    def started(settings: Settings, options: stack.StackOptions) -> Iterator[Settings]:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while Triton loads
        time.sleep(2.0)
        yield settings

    async def serve(settings: Settings) -> None:
        return None

    monkeypatch.setattr(stack, "started", started)
    monkeypatch.setattr(stack, "serve", serve)
    handlers = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    umask = os.umask(0o022)
    try:
        assert stack.run(Settings(port=0), stack.StackOptions(tmp_path, tmp_path)) == 130
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        os.umask(umask)
