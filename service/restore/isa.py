"""Whether this CPU runs bf16 natively: one probe for the worker's automatic bf16 and for training's
`--precision auto`.

Its own module (torch and os only) so that training can ask without loading the worker's job types.
"""

from __future__ import annotations

import os

import torch

# ONEDNN_MAX_CPU_ISA values that still include bf16 instructions (oneDNN's names; ALL/DEFAULT: no cap).
_BF16_ONEDNN_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AMX", "AVX10", "ALL", "DEFAULT")


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 convolutions natively, and why (not), for logs and errors."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX512":
        return False, f"torch's CPU kernels run at {capability} (bf16 needs AVX512 with avx512_bf16 or AMX)"
    # oneDNN has its own ISA cap; read when a run starts, not at import.
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not any(isa in cap for isa in _BF16_ONEDNN_ISAS):
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN below its bf16 instructions"
    if torch.cpu._is_amx_tile_supported():
        return True, "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return True, "avx512_bf16"
    return False, "this CPU has neither avx512_bf16 nor AMX (bf16 would be emulated, slower than fp32)"
