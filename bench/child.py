"""A benchmark module run as a child of `python -m bench`: its own session, a wall-clock budget, its log.

Parts that start their own stack (Restore speed, the HTTP hint loop, overload, memory) run this way, so
a timeout stops the child and every process it started (by its process-group id), and a crash in one
costs only that part.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.config import ROOT


@dataclass(frozen=True)
class ChildRun:
    returncode: int | None  # None: stopped at the budget
    output: str  # stdout and stderr together

    def failure(self, module: str, budget_s: float) -> str | None:
        """Why the part has no result, or None when the child exited 0 (or 1: goals missed, numbers kept)."""
        if self.returncode is None:
            return f"{module} did not finish within {budget_s:.0f} s"
        if self.returncode not in (0, 1):
            return f"{module} failed ({self.returncode}): {self.output[-800:]}"
        return None


def run_child(module: str, arguments: list[str], budget_s: float, log_path: Path) -> ChildRun:
    """`python -m module arguments` from the repository root; its output is kept in `log_path`."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    returncode: int | None
    try:
        output, _ = process.communicate(timeout=budget_s)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    finally:
        if process.poll() is None:  # interrupted: leave nothing behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(output or "")
    return ChildRun(returncode, output or "")
