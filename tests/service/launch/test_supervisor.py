"""Supervisor's decisions, one check at a time, against a fake Triton and a scripted probe client.

The integration side (real processes killed and stopped) is tests/integration/test_self_healing.py;
here each outcome of a model probe is chosen, to pin what the supervisor does about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from tritonclient.utils import InferenceServerException

from contract import MODELS
from service.launch.supervisor import HUNG_AFTER_MISSES, Supervisor

MODEL = "larsson16"


@dataclass
class FakeHandle:
    alive: bool = True

    def running(self) -> bool:
        return self.alive


@dataclass
class FakeTriton:
    """What the supervisor calls on service.launch.triton.TritonServer, recorded."""

    handle: FakeHandle = field(default_factory=FakeHandle)
    ready: bool = True
    reloads: list[str] = field(default_factory=list)
    restarts: int = 0

    def is_ready(self) -> bool:
        return self.ready

    def reload_model(self, name: str) -> None:
        self.reloads.append(name)

    def restart(self) -> None:
        self.restarts += 1


@dataclass
class ScriptedClient:
    """`infer` answers MODEL's probes from `outcomes` in turn ("ok", "timeout", "error"); others are ok."""

    outcomes: list[str] = field(default_factory=list)

    def infer(self, name: str, inputs: Any, timeout: int) -> None:
        if name != MODEL or not self.outcomes:
            return
        outcome = self.outcomes.pop(0)
        if outcome == "timeout":
            raise TimeoutError("timed out")
        if outcome == "error":
            raise InferenceServerException(f"Stub process '{MODEL}_0_0' is not healthy.")


@pytest.fixture
def triton() -> FakeTriton:
    return FakeTriton()


@pytest.fixture
def supervisor(triton: FakeTriton) -> Iterator[Supervisor]:
    worker = FakeHandle()
    fake: Any = worker  # the fakes stand in for TritonServer and ManagedProcess
    yield Supervisor(cast(Any, triton), None, fake, lambda: fake, probe_every_s=0.0)


def _checks(supervisor: Supervisor, client: ScriptedClient, n: int) -> None:
    for _ in range(n):
        supervisor._check(cast(Any, client))


def test_a_wrong_answer_reloads_the_model_alone_at_once(supervisor: Supervisor, triton: FakeTriton) -> None:
    _checks(supervisor, ScriptedClient(["error"]), 1)
    assert triton.reloads == [MODEL] and triton.restarts == 0
    assert supervisor.events and "not healthy" in supervisor.events[0]


def test_one_slow_probe_is_probed_again_before_anything_is_done(
    supervisor: Supervisor, triton: FakeTriton
) -> None:
    # timeout, answer, timeout: never twice in a row, so nothing is reloaded (a busy host, not a fault)
    _checks(supervisor, ScriptedClient(["timeout", "ok", "timeout", "ok"]), 4)
    assert triton.reloads == [] and triton.restarts == 0 and supervisor.events == []


def test_slow_probes_in_a_row_reload_the_model(supervisor: Supervisor, triton: FakeTriton) -> None:
    _checks(supervisor, ScriptedClient(["timeout"] * HUNG_AFTER_MISSES), HUNG_AFTER_MISSES)
    assert triton.reloads == [MODEL] and triton.restarts == 0
    assert f"({HUNG_AFTER_MISSES} in a row)" in supervisor.events[0]


def test_a_slow_first_answer_after_a_reload_is_not_escalated(
    supervisor: Supervisor, triton: FakeTriton
) -> None:
    # error -> reload -> the re-probe times out (a fresh stub's first inference): no server restart
    _checks(supervisor, ScriptedClient(["error", "timeout"]), 1)
    assert triton.reloads == [MODEL] and triton.restarts == 0


def test_a_model_still_wrong_after_its_reload_restarts_the_server(
    supervisor: Supervisor, triton: FakeTriton
) -> None:
    _checks(supervisor, ScriptedClient(["error", "error"]), 1)
    assert triton.reloads == [MODEL] and triton.restarts == 1


def test_a_hung_server_is_restarted_after_two_missed_health_checks(
    supervisor: Supervisor, triton: FakeTriton
) -> None:
    triton.ready = False
    _checks(supervisor, ScriptedClient(), HUNG_AFTER_MISSES - 1)
    assert triton.restarts == 0
    _checks(supervisor, ScriptedClient(), 1)
    assert triton.restarts == 1
    assert supervisor.events[0].startswith(f"Triton did not answer {HUNG_AFTER_MISSES} health checks")


def test_the_models_are_all_probed(supervisor: Supervisor) -> None:
    seen: list[str] = []

    class Recording(ScriptedClient):
        def infer(self, name: str, inputs: Any, timeout: int) -> None:
            seen.append(name)

    _checks(supervisor, Recording(), 1)
    assert seen == list(MODELS)
