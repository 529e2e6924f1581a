"""The gateway never imports torch, colorizers or export (docs/design.md: imports point one way)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY_MODULES = [
    "service.server",
    "service.gateway",
    "service.colorize",
    "service.triton",
    "service.launch.stack",
    "service.launch.process",
    "service.launch.triton",
    "service.launch.worker",
    "service.client",
    "service.lab",
    "service.codec",
    "service.ab_decode",
    "service.__main__",
    "service.restorer",
    "service.jobs",
    "service.launch.redis",
    "service.restore.wire",
]


def test_gateway_modules_do_not_import_torch() -> None:
    probe = (
        "import importlib, sys\n"
        f"for name in {GATEWAY_MODULES!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'colorizers', 'export'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


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
