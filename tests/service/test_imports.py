"""The import rules of the tree (docs/architecture.md): which process may load what.

Each rule imports every module of a room in a fresh interpreter and looks at what came along in
`sys.modules`, so an import hidden three modules down counts as much as a direct one. Modules are
found by walking the packages, not listed, so a new module is covered the day it is added.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules(*packages: str) -> list[str]:
    found = []
    for package in packages:
        path = REPO / package.replace(".", "/")
        if path.with_suffix(".py").is_file():
            found.append(package)
            continue
        found.append(package)
        for info in pkgutil.walk_packages([str(path)], prefix=f"{package}."):
            if not info.name.endswith("__main__"):  # running it would start the process
                found.append(info.name)
    return found


def _loaded_by(modules: list[str]) -> set[str]:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def _roots(modules: set[str], *roots: str) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(f"{r}.") for r in roots))


TORCH_FREE = ("service.gateway", "service.bus", "service.color", "service.launch", "service.client",
              "service.errors", "service.codec", "service.metrics")  # fmt: skip


def test_the_gateway_and_what_it_shares_never_load_torch_training_or_export() -> None:
    loaded = _loaded_by(_modules(*TORCH_FREE))
    assert _roots(loaded, "torch", "colorizers", "export", "service.restore") == []


def test_the_worker_never_loads_the_gateway() -> None:
    loaded = _loaded_by(_modules("service.restore"))
    assert "torch" in loaded, "the probe did import the worker"
    assert _roots(loaded, "service.gateway", "service.launch", "service.client") == []


def test_training_uses_only_the_colour_maths_of_the_service() -> None:
    loaded = _loaded_by(_modules("colorizers"))
    service = _roots(loaded, "service")
    # The colour maths raises the service's InvalidArgument (stdlib-only) for a bad hint or pixel;
    # `--precision auto` asks the worker's CPU probe (torch only), never its job types or engine.
    allowed = ("service", "service.errors", "service.color", "service.restore", "service.restore.isa")
    assert service and all(m in allowed or m.startswith("service.color.") for m in service), service


@pytest.mark.parametrize("room", ["service.color", "service.bus"])
def test_shared_rooms_do_not_reach_into_a_process(room: str) -> None:
    loaded = _loaded_by(_modules(room))
    assert _roots(loaded, "service.gateway", "service.restore", "service.launch") == []


def test_contract_is_stdlib_only() -> None:
    probe = (
        "import sys; before = set(sys.modules); import contract\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'contract'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
