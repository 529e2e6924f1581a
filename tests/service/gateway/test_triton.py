"""`TritonBackend`'s shared-memory bookkeeping against a scripted Triton client (the real server's side
is tests/integration/test_colorize.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from tritonclient.utils import InferenceServerException

from service.gateway import triton
from service.gateway.triton import TritonBackend


class _Refusing:
    """Refuses the first `refusals` unregisters with `message`, then accepts."""

    def __init__(self, refusals: int, message: str) -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    async def unregister_system_shared_memory(self, name: str) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise InferenceServerException(self.message.format(name=name))

    async def close(self) -> None:
        pass


IN_USE = "Cannot unregister shared memory region '{name}', it is currently in use."


def _unregister(client: _Refusing) -> None:
    async def main() -> None:
        backend = TritonBackend("127.0.0.1:1", shared_memory=True, slots=1)
        backend._client = client
        await backend._unregister("priorlab_gw_test_0_in")

    asyncio.run(main())


def test_a_region_triton_still_holds_is_unregistered_once_it_lets_go() -> None:
    client = _Refusing(3, IN_USE)
    _unregister(client)
    assert client.calls == 4


def test_a_region_held_past_the_wait_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton, "IN_USE_WAIT_S", 0.05)
    client = _Refusing(10**9, IN_USE)
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="currently in use"):
        _unregister(client)
    assert 0.05 <= time.monotonic() - start < 1.0 and client.calls > 1


def test_another_refusal_is_not_retried() -> None:
    client = _Refusing(1, "Unable to find shared memory region: '{name}'")
    with pytest.raises(InferenceServerException, match="Unable to find"):
        _unregister(client)
    assert client.calls == 1
