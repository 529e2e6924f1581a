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
        "isa": isa(),
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


def cpu_flags() -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where the file is unreadable)."""
    return set(_first("/proc/cpuinfo", "flags").split())


def isa() -> str:
    """The widest x86 vector ISA the CPU offers, as torch names it, plus native bf16/AMX where present.

    From /proc/cpuinfo, not torch, so torch-free parts (the gateway benchmarks) record it too; it matches
    `torch.backends.cpu.get_cpu_capability()` unless ATEN_CPU_CAPABILITY lowers torch's choice.
    """
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        name = "AVX512"
    elif "avx2" in flags:
        name = "AVX2"
    else:
        name = "DEFAULT"
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(extras)})" if extras else name


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (a server and its stubs).

    Processes that already exited are not counted: read it around a phase in which the group stays up.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        # after "pid (comm)": state ppid pgrp session ... utime(12) stime(13), 0-based from state
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick
