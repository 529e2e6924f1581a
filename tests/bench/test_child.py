"""bench.child (a benchmark module as a child process) and the figures of bench.service_parts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench import service_parts
from bench.child import run_child
from bench.config import BenchConfig
from bench.context import Context
from bench.stack import Stack


def test_a_child_that_exits_keeps_its_output(tmp_path: Path) -> None:
    run = run_child("platform", [], 60.0, tmp_path / "platform.log")
    assert run.returncode == 0 and run.failure("platform", 60.0) is None
    assert "Linux" in run.output and (tmp_path / "platform.log").read_text() == run.output


def test_a_child_past_its_budget_is_stopped_with_its_group(tmp_path: Path) -> None:
    start = time.monotonic()
    run = run_child("http.server", ["--bind", "127.0.0.1", "0"], 1.0, tmp_path / "server.log")
    assert time.monotonic() - start < 15
    assert run.returncode is None
    assert run.failure("http.server", 1.0) == "http.server did not finish within 1 s"


def test_exit_1_is_missed_goals_and_other_codes_are_failures(tmp_path: Path) -> None:
    # Exit 1 is also Python's uncaught exception: the caller then finds no fresh JSON and skips the part.
    run = run_child("no_such_module_here", [], 60.0, tmp_path / "x.log")
    assert run.returncode == 1 and run.failure("no_such_module_here", 60.0) is None
    assert "No module named" in run.output
    run = run_child("json.tool", ["/nonexistent"], 60.0, tmp_path / "j.log")  # argparse: exit 2
    assert run.returncode == 2
    assert (run.failure("json.tool", 60.0) or "").startswith("json.tool failed (2)")


def _context(tmp_path: Path) -> Context:
    stack = Stack(logs=tmp_path / "logs")
    return Context(BenchConfig.full(), tmp_path, stack, deadline=time.monotonic() + 600)


def test_overload_figures_judge_the_issue_goals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document: dict[str, Any] = {
        "command": "python -m bench.overload",
        "markdown": "overload.md",
        "plan": {"factor": 2.0},
        "capacity": {"ok_per_s": 20.0},
        "overload": {
            "ok_per_s": 19.0, "ok_share_of_capacity": 0.95, "codes": {"OK": 10, "RESOURCE_EXHAUSTED": 9},
            "refused_max_ms": 61.0, "refused_p50_ms": 3.0, "refused_p99_ms": 40.0,
            "deadline_exceeded_admitted": 0, "other_codes": {},
        },
    }  # fmt: skip
    monkeypatch.setattr(service_parts, "_child", lambda *_args: document)
    figures = {f["key"]: f for f in service_parts.run_overload(_context(tmp_path))["figures"]}
    assert figures["overload_ok_share"]["met"] is True
    assert figures["overload_refusal_max_ms"]["met"] is False  # 61 ms > 50 ms
    assert figures["overload_deadline_exceeded"]["met"] is True


def test_a_skipped_child_part_stays_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_parts, "_child", lambda *_args: {"skipped": "why", "figures": []})
    for run in (service_parts.run_http_hint, service_parts.run_overload, service_parts.run_memory):
        assert run(_context(tmp_path)) == {"skipped": "why", "figures": []}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_no_child_group_is_left(tmp_path: Path) -> None:
    run_child("http.server", ["--bind", "127.0.0.1", "0"], 0.5, tmp_path / "s.log")
    time.sleep(0.2)
    marker = "http.server\x00--bind\x00127.0.0.1\x000"
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and marker in _cmdline(pid)]
    for pid in leftovers:
        os.kill(int(pid), signal.SIGKILL)
    assert not leftovers
