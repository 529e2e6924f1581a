"""service.color.jit: kernels compile eagerly and fall back to memory where nothing can be cached."""

from __future__ import annotations

from typing import Any

import numba
import pytest

from service.color import jit


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
