"""service.color.jit: kernels compile eagerly, fall back to memory where nothing can be cached, use the
host's full vector width, and inline their loop helpers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numba
import pytest
from numba.core.registry import CPUDispatcher

from service.color import fused, jit

ROOT = Path(__file__).resolve().parents[3]


def test_a_signature_compiles_at_decoration() -> None:
    @jit.kernel("float64(float64)")
    def twice(x):
        return 2.0 * x

    compiled: Any = twice
    assert compiled.signatures and not compiled._can_compile
    assert twice(3.0) == 6.0


def test_no_writable_cache_dir_falls_back_to_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    real = numba.njit
    asked: list[bool] = []

    def njit(*args: Any, **options: Any) -> Any:
        asked.append(options.get("cache", False))
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return real(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)

    @jit.kernel("float64(float64)")
    def twice(x):
        return 2.0 * x

    assert asked == [True, False]
    assert twice(3.0) == 6.0


def test_vector_features_drop_the_256_bit_preference_on_avx512_only() -> None:
    avx512 = "+sse2,+avx2,+fma,+avx512f,+avx512bw"
    assert jit.vector_features(avx512) == avx512 + ",-prefer-256-bit"
    assert jit.vector_features("+sse2,+avx2,+fma,-avx512f,-avx512bw") is None
    assert jit.vector_features("+avx512fp16") is None  # a feature named alike is not AVX-512F


_FEATURES = """
import json, llvmlite.binding as ll
from numba.core import registry
from service.color import fused  # compiles (or loads) the kernels
used = registry.cpu_target.target_context.codegen()._tm_features
print(json.dumps([ll.get_host_cpu_features().flatten(), used]))
"""


@pytest.mark.parametrize("explicit", [None, "+sse2,+avx2"])
def test_the_gateway_kernels_compile_with_the_chosen_vector_width(
    tmp_path: Path, explicit: str | None
) -> None:
    """In a fresh process (numba reads its features once): the host's features, with the 256-bit
    preference off on AVX-512; an explicit NUMBA_CPU_FEATURES is kept as given."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CPU_FEATURES", None)
    if explicit:
        env["NUMBA_CPU_FEATURES"] = explicit
    done = subprocess.run(
        [sys.executable, "-c", _FEATURES], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    host, used = json.loads(done.stdout.splitlines()[-1])
    assert used == (explicit or jit.vector_features(host) or host)


def _referenced_kernels(asm: str) -> set[str]:
    """Names of service.color.fused functions whose address the machine code loads (to call them)."""
    return {m.group(1) for m in re.finditer(r"\$_ZN7service5color5fused\d+(\w+?)B\d", asm)}


def test_no_kernel_calls_a_helper_out_of_line() -> None:
    """A helper called as a function kept its loop scalar in the process that compiled it (Lab -> sRGB
    5x slower there than when loaded from the cache); `kernel(inline=True)` puts it into its callers.
    Compiled afresh here (no cache), each kernel's machine code may load no other fused function."""
    kernels = [
        obj for obj in vars(fused).values()
        if isinstance(obj, CPUDispatcher) and obj.signatures and obj.__module__ == fused.__name__
    ]  # fmt: skip
    assert len(kernels) >= 8
    for dispatcher in kernels:
        name = dispatcher.py_func.__name__
        fresh = numba.njit(
            dispatcher.signatures[0], cache=False, fastmath=dispatcher.targetoptions["fastmath"], nogil=True
        )(dispatcher.py_func)
        referenced = _referenced_kernels(fresh.inspect_asm(fresh.signatures[0])) - {name}
        assert not referenced, f"{name} calls {sorted(referenced)} out of line"
