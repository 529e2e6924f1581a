"""The gateway process (torch-free): the gRPC front end of Colorize and Restore.

`python -m service.gateway` runs it alone, configured by `PRIORLAB_*` (`settings`); `make run` runs it
inside the local stack (`service.launch.stack`).

* `server`     builds the gRPC server: servicers, the error/metrics interceptor, health, reflection
* `colorizer`  the Colorizer servicer: request validation and the response messages
* `colorize`   the Colorize pipeline: decode, L at the working size, Triton call, ab decode, recombine
* `triton`     the Triton client (`InferenceBackend`), with system shared memory when co-located
* `restorer`   the Restorer servicer: jobs on the Redis bus (`service.bus`), never runs them
* `settings`   the gateway's settings, read once from the environment
"""
