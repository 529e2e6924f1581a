"""The Restore worker process (torch): claims Deep Image Prior jobs from the job bus and runs them.

`python -m service.restore --redis URL` starts one (`runner`). The job's types and wire format are the
bus's (`service.bus`); this package is the only torch user under `service/`, and nothing in the
gateway imports it (`tests/service/test_imports.py`).

* `runner`     the process: slots, claiming, heartbeats, cancel listener, shutdown, metrics
* `engine`     `restore(image, task, ...)`: the optimisation loop and its hooks
* `step`       one optimisation step, eager or replayed from a CUDA graph
* `batched`    `restore_batch(jobs)`: K like jobs' networks stacked in one step (torch.func.vmap)
* `recipes`    the reference per-task hyper-parameters
* `problem`    padding + degradation operator + loss per task
* `skip`       the `skip` encoder-decoder network
* `lanczos`    the fixed Lanczos-2 downsampler of the SR loss
* `early_stop` held-out-pixel validation, ES-EMV / ES-WMV running variance and the discrepancy rule
* `tuning`     the automatic speed switches (bf16, channels_last) decided per device
* `isa`        whether the CPU runs bf16 natively (also read by training's `--precision auto`)
* `padding`    input normalisation and reflection padding (numpy only)
* `cli`        `python -m service.restore.cli denoise in.png out.png --sigma 25`: one job, no bus
"""
