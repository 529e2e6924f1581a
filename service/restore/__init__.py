"""Deep Image Prior restoration: the engine the restore workers run (the only torch user under service/).

Modules, one concern each:

* `request`   task, stopping-policy and speed-option dataclasses (numpy only)
* `result`    `Progress`, `RestoreResult`, `StopReason` (numpy only)
* `engine`    `restore(image, task, ...)`: the optimisation loop and its hooks
* `step`      one optimisation step, eager or replayed from a CUDA graph
* `batched`   `restore_batch(jobs)`: K like jobs' networks stacked in one step (torch.func.vmap)
* `recipes`   the reference per-task hyper-parameters
* `problem`   padding + degradation operator + loss per task
* `skip`      the `skip` encoder-decoder network
* `lanczos`   the fixed Lanczos-2 downsampler of the SR loss
* `early_stop` held-out-pixel validation, ES-EMV / ES-WMV running variance and the discrepancy rule
* `padding`   input normalisation and reflection padding (numpy only)
* `cli`       `python -m service.restore.cli denoise in.png out.png --sigma 25`

Importing this package does not import torch (the pool layer can use the request/result types without
it); `restore` is loaded from `engine` on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.restore.request import (
    AutoStop,
    DenoiseTask,
    EngineOptions,
    FixedIterations,
    InpaintStyle,
    InpaintTask,
    JpegTask,
    Stopping,
    SuperResolveTask,
    Task,
)
from service.restore.result import Progress, RestoreResult, StopReason

if TYPE_CHECKING:
    from service.restore.engine import restore

__all__ = [
    "AutoStop",
    "DenoiseTask",
    "EngineOptions",
    "FixedIterations",
    "InpaintStyle",
    "InpaintTask",
    "JpegTask",
    "Progress",
    "RestoreResult",
    "StopReason",
    "Stopping",
    "SuperResolveTask",
    "Task",
    "restore",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `import service.restore` stays torch-free.
    if name == "restore":
        from service.restore.engine import restore

        return restore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
