"""bench.machine: the ISA label from CPU flags, and CPU seconds per process group from /proc."""

from __future__ import annotations

import os
import time

import pytest

from bench import machine


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "AVX2"),
        ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "AVX512"),
        ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_bf16"},
         "AVX512 (avx512_bf16, amx_bf16)"),
        ({"avx2", "avx512f"}, "AVX2"),  # AVX-512 foundation alone is not torch's AVX512 level
        (set(), "DEFAULT"),
    ],
)  # fmt: skip
def test_isa_label_from_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: str) -> None:
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    assert machine.isa() == expected


def test_group_cpu_seconds_counts_this_process_group() -> None:
    before = machine.group_cpu_seconds(os.getpgrp())
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    after = machine.group_cpu_seconds(os.getpgrp())
    assert 0.2 <= after - before <= 5.0
    assert machine.group_cpu_seconds(2**22 + 12345) == 0.0  # no such group
