"""How the gateway's numba kernels are compiled: one decorator and the array types of their signatures.

`kernel(signature)` compiles when the module that defines the kernel is imported (explicit signatures),
i.e. when the gateway starts, never on a request. `cache=True` keeps the machine code in `__pycache__`
beside the module, or numba's per-user cache dir (`NUMBA_CACHE_DIR`) where the package is read-only,
and compiles in memory where neither is writable.

Two things about the machine code that measured large (bench/results/gateway_overhead.md):

- Helpers that hold loops are inlined in numba's IR (`kernel(inline=True)`). Called as separate
  functions, the process that compiles them runs a copy whose arithmetic loop stays scalar, while
  every later process loads the inlined, vectorised code from the cache: Lab -> sRGB at 512² took
  2.5 ms in the compiling process against 0.43 ms from the cache, i.e. a gateway with no writable
  cache dir, or the first one after an upgrade, ran that stage ~5x slower.
- On AVX-512 hosts LLVM may use whole 512-bit vectors (`vector_features`): it prefers 256-bit ones on
  Intel CPUs since Skylake-SP, whose clocks dropped under wide vectors. On the AMX Xeon this host
  class has, the annealed mean went 0.60 -> 0.49 ms and Lab -> sRGB at 768x512 0.93 -> 0.80 ms.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import llvmlite.binding
import numba
from numba.core import registry, types

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


def vector_features(host: str) -> str | None:
    """numba's target features for a host's LLVM feature string: on AVX-512, the host's with LLVM's
    256-bit preference turned off; elsewhere None (numba's own choice)."""
    if "+avx512f" not in host.split(","):
        return None
    return f"{host},-prefer-256-bit"


@functools.cache
def _choose_vector_width() -> None:
    """Set numba's target features before its code generator exists (it reads them once, at the first
    compile in the process). An explicit NUMBA_CPU_FEATURES wins."""
    config: Any = numba.config  # its settings are set at run time: mypy cannot see them
    if config.CPU_FEATURES is not None:
        return
    if "_toplevel_target_context" in vars(registry.cpu_target):  # something compiled before us
        log.info("numba's code generator already exists: kernels keep its vector width")
        return
    llvmlite.binding.initialize_native_target()
    config.CPU_FEATURES = vector_features(llvmlite.binding.get_host_cpu_features().flatten())


def kernel(signature: Any = None, *, fast: bool = True, inline: bool = False) -> Callable[[_F], _F]:
    """`numba.njit(signature, cache=True)` (eager when a signature is given), or the same without the
    on-disk cache where numba finds no writable cache dir (it raises at decoration then). `inline`: a
    helper called from other kernels, inlined into them in numba's IR (see the module docstring).
    `fast=False`: IEEE arithmetic in numpy's order (no contraction or reassociation), for kernels that
    must give numpy's float32 results bit for bit."""
    args = () if signature is None else (signature,)
    _choose_vector_width()

    def wrap(function: _F) -> _F:
        njit: Any = numba.njit
        options: dict[str, Any] = {"fastmath": FAST if fast else False, "nogil": True, "boundscheck": False}
        if inline:
            options["inline"] = "always"
        try:
            compiled: _F = njit(*args, cache=True, **options)(function)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available ..."
            log.warning("numba cache unavailable (%s): compiling %s in memory", exc, function.__name__)
            compiled = njit(*args, cache=False, **options)(function)
        return compiled

    return wrap
