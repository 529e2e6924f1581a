"""Print the README's performance section from the latest results (`python -m bench` writes them).

.venv/bin/python -m bench.readme_section [--results bench/results/results.json] > section.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.config import RESULTS
from bench.figures import format_value, goal_text, verdict
from bench.report import all_figures


def render(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    served = results.get("served", {})
    packages = m.get("packages", {})
    trained = "trained" if served.get("trained") else "untrained: these are speed figures only"
    lines = [
        "## Performance",
        "",
        f"Measured by `make bench` on {results.get('generated', '?')}: {m.get('cpu', '?')} "
        f"({m.get('isa', '?')}), "
        f"{m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB, {m.get('os', '?')}; Python "
        f"{m.get('python', '?')}, Triton {results.get('triton_version', '?')} (Python backend + onnxruntime "
        f"{packages.get('onnxruntime', '?')}), torch {packages.get('torch', '?')}. Served checkpoint "
        f"`{served.get('checkpoint', '?')}` ({trained}).",
    ]
    if results.get("quick"):
        lines += [
            "",
            "**These numbers come from a `--quick` smoke run: rerun `make bench` before quoting them.**",
        ]
    lines += [
        "",
        "Each figure is a ratio of two things measured in the same run (the machine is shared and "
        "noisy; absolute times are in the full report, `bench/results/REPORT.md`).",
        "",
        "| figure | measured | goal | | ISA, load average |",
        "|---|---|---|---|---|",
    ]
    for figure in all_figures(results):
        value = format_value(figure["value"], figure.get("unit", ""))
        lines.append(
            f"| {figure['label']} | {value} | {goal_text(figure)} | {verdict(figure)} | {figure['host']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.readme_section", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--results", type=Path, default=RESULTS / "results.json")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"no results at {args.results}: run `make bench` first", file=sys.stderr)
        return 1
    sys.stdout.write(render(json.loads(args.results.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
