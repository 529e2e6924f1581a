"""The Restore job bus: what the gateway and the workers share, and nothing of either (no torch).

* `jobs`     the Redis keys, scripts and state machine (`JobBus`)
* `wire`     RestoreRequest/RestoreEvent protobufs <-> the engine's request and result types
* `request`  task, stopping-policy and option dataclasses of a job
* `result`   `Progress`, `RestoreResult`, `StopReason`
"""
