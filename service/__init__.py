"""priorlab's running service. Each sub-package is one process, or what processes share:

* `gateway/`  the gateway process (torch-free): gRPC Colorize and Restore front ends, Triton client
* `restore/`  a Restore worker process (torch): Deep Image Prior jobs from the bus
* `bus/`      the Restore job bus shared by gateway and workers: Redis keys and scripts, wire format
* `color/`    numpy colour maths shared by the gateway, training and benchmarks
* `launch/`   starting and stopping local processes: `make run`'s stack, benchmarks, tests
* `client.py` the command-line client (a process of its own, stdlib + grpc)
* `errors.py`, `codec.py`, `metrics.py`, `pb/`  shared by gateway and workers: the error hierarchy and
  its gRPC status table, image decode/encode with limits, Prometheus objects, generated protobuf code

Triton itself runs from `model_repository/` (written by `export/`). Import rules are tested in
`tests/service/test_imports.py`.
"""
