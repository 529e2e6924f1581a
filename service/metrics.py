"""Every Prometheus object of the gateway, on a registry per server (tests run several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed, by method and status code",
            ("grpc_method", "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "RPC latency inside the gateway",
            ("grpc_method",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "priorlab_stage_seconds",
            "Time per pipeline stage (decode, triton, postprocess)",
            ("stage",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "priorlab_colorize_in_flight", "Colorize requests in progress", registry=self.registry
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


_JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


@dataclass
class WorkerMetrics:
    """A Restore worker's Prometheus objects (`python -m service.restore --metrics-port P`)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.queue_depth = Gauge(
            "priorlab_restore_queue_depth",
            "Restore jobs waiting on the bus (all workers)",
            registry=self.registry,
        )
        self.slots = Gauge("priorlab_restore_slots", "Job slots of this worker", registry=self.registry)
        self.busy_slots = Gauge("priorlab_restore_busy_slots", "Slots running a job", registry=self.registry)
        self.jobs = Counter(
            "priorlab_restore_jobs_total",
            "Jobs ended on this worker, by task and outcome (done, failed, cancelled, released, lost)",
            ("task", "outcome"),
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "priorlab_restore_job_seconds",
            "Wall time of a job's run on this worker (decode to encode)",
            ("task",),
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.iterations = Counter(
            "priorlab_restore_iterations_total",
            "DIP iterations run (rate() = iterations/s)",
            ("task",),
            registry=self.registry,
        )
        self.iterations_per_second = Gauge(
            "priorlab_restore_iterations_per_second",
            "Iterations/s of the last finished job, by task",
            ("task",),
            registry=self.registry,
        )
