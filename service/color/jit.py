"""How the gateway's numba kernels are compiled: one decorator and the array types of their signatures.

`kernel(signature)` compiles when the module that defines the kernel is imported (explicit signatures),
i.e. when the gateway starts, never on a request. `cache=True` keeps the machine code in `__pycache__`
beside the module, or numba's per-user cache dir (`NUMBA_CACHE_DIR`) where the package is read-only,
and compiles in memory where neither is writable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numba
from numba.core import types

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

# fast-math flags: fused multiply-adds, reciprocal and reassociation (vectorised sums). No nnan/ninf:
# the clamps must keep working on whatever comes in.
FAST = {"contract", "arcp", "nsz", "reassoc", "afn"}


def readonly_array(dtype: Any, ndim: int) -> Any:
    """A C-contiguous input array type that also takes read-only arrays (the tables, decoded pixels)."""
    return types.Array(dtype, ndim, "C", readonly=True)


def array(dtype: Any, ndim: int) -> Any:
    """A C-contiguous array the kernel writes."""
    return types.Array(dtype, ndim, "C")


def kernel(signature: Any = None, *, fast: bool = True) -> Callable[[_F], _F]:
    """`numba.njit(signature, cache=True)` (eager when a signature is given), or the same without the
    on-disk cache where numba finds no writable cache dir (it raises at decoration then). `fast=False`:
    IEEE arithmetic in numpy's order (no contraction or reassociation), for kernels that must give
    numpy's float32 results bit for bit."""
    args = () if signature is None else (signature,)

    def wrap(function: _F) -> _F:
        njit: Any = numba.njit
        options: dict[str, Any] = {"fastmath": FAST if fast else False, "nogil": True, "boundscheck": False}
        try:
            compiled: _F = njit(*args, cache=True, **options)(function)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available ..."
            log.warning("numba cache unavailable (%s): compiling %s in memory", exc, function.__name__)
            compiled = njit(*args, cache=False, **options)(function)
        return compiled

    return wrap
