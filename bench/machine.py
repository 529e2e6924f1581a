"""What the numbers were measured on: CPU, cores, memory, OS, library versions, load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "numpy",
    "onnxruntime",
    "tritonclient",
    "nvidia-pytriton",
    "grpcio",
    "scikit-image",
    "pillow",
    "matplotlib",
)


def _first(path: str, key: str) -> str:
    """Value of the first `key: value` / `KEY=value` line of a system file, or ''."""
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":" if ":" in line else "=")
            if sep and name.strip() == key:
                return value.strip().strip('"')
    except OSError:
        pass
    return ""


def describe() -> dict[str, Any]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    mem_kib = _first("/proc/meminfo", "MemTotal").split()
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem_kib[0]) / 2**20, 1) if mem_kib else None,
        "os": _first("/etc/os-release", "PRETTY_NAME") or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
    }


def load_average() -> float:
    """1-minute load average: above the core count, another process shared the cores (noisy run)."""
    return round(os.getloadavg()[0], 2)
