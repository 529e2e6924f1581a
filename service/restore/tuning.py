"""The speed settings a run actually gets: `EngineOptions`' automatic (None) switches, decided per device.

bf16: None means on where the CPU runs bf16 natively (avx512_bf16 or AMX, torch's kernels at AVX512,
oneDNN not capped below them): the network's forward under bf16 autocast in NHWC, 0.37-0.43x the
s/iteration of the fp32 reference loop (256² denoising, 2 threads, bench/results/dip/speed.md), against
fp32 NHWC's 0.86x. It became the default on 1 Dec by a rule fixed before its data (docs/dip.md §5.1):
over 12 fresh seeds its PSNR trace is +0.001 / +0.018 / +0.007 / +0.024 dB from the fp32 NHWC default's
at 100 / 200 / 300 / 500 iterations (SE 0.05-0.07), within the issue's ±0.1 dB. Elsewhere None means off,
and True is refused: emulated bf16 would be slower than fp32. False keeps fp32 on any CPU.
channels_last: None means NHWC with bf16 or at AVX512 (faster there), NCHW at AVX2.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from service.bus.request import EngineOptions
from service.restore.isa import native_bf16

logger = logging.getLogger(__name__)


def resolve(options: EngineOptions, device: torch.device) -> EngineOptions:
    """`options` with `bf16` and `channels_last` decided for `device` (no None left).

    Raises ValueError for bf16=True where it cannot run natively: asked-for speed that would be a
    slow-down is refused, with the reason, rather than silently ignored.
    """
    if device.type != "cpu":
        if options.bf16:
            raise ValueError(f"bf16=True is a CPU option; {device.type} runs fp32 (set bf16=None or False)")
        return dataclasses.replace(options, bf16=False, channels_last=bool(options.channels_last))
    bf16 = False
    if options.bf16 is not False:  # None: on where native (see the module docstring); True: required
        native, why = native_bf16()
        if options.bf16 and not native:
            raise ValueError(f"bf16=True needs native bf16 on the CPU, but {why}; set bf16=None or False")
        bf16 = native
        logger.debug("bf16 %s: %s", "on" if bf16 else "off", why)
    # NHWC pays with bf16 (oneDNN's bf16/AMX kernels are NHWC) and in fp32 at AVX512 (0.86x NCHW's
    # s/iteration); at AVX2 NCHW is faster (NHWC 1.09x) (bench/results/dip/speed.md, speed_avx2.md).
    nhwc = bf16 or torch.backends.cpu.get_cpu_capability() == "AVX512"
    channels_last = nhwc if options.channels_last is None else options.channels_last
    return dataclasses.replace(options, bf16=bf16, channels_last=channels_last)
