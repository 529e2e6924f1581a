"""Gateway settings: one frozen dataclass, built once in the entry point from `PRIORLAB_*`.

Nothing reads the environment at import time; tests build `Settings(...)` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from service.bus.timing import DEFAULT_VISIBILITY_TIMEOUT_S

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port
    triton_url: str = "127.0.0.1:8001"
    # System shared memory for tensors: only when Triton shares this host's /dev/shm.
    triton_shared_memory: bool = False
    # Annealed mean in the Triton graph (returns 2 ab planes) instead of in the gateway (313 FP16
    # logits). Pays when Triton is remote; co-located with shared memory, the gateway decode wins.
    decode_in_triton: bool = False
    # SIGGRAPH17 hints carried further along the photo's lightness after the network, within half the
    # working size (service/color/hint_spread.py); off = the network's output as it is.
    hint_spread: bool = True
    # Explicit request limits (documented in the README).
    max_message_bytes: int = 64 << 20
    max_pixels: int = 50_000_000
    max_concurrent_colorize: int = 16  # = shared-memory slots when shm is on
    # Overload and memory (service/gateway/admission.py; README "Overload and memory").
    max_queued_colorize: int = 32  # admitted calls waiting for a slot or pixels; full -> RESOURCE_EXHAUSTED
    max_pixels_in_flight: int = 100_000_000  # decoded pixels of all calls in flight (~22 B each at peak)
    # A call alone in the gateway with a JPEG up to this many pixels, answered as JPEG or PNG without
    # hints, is decoded and encoded on the event loop: its colour work (~2 ms at 512²) costs less
    # latency than the two thread hops it would take; anything else, and any call beside others, goes
    # to worker threads, so the loop keeps answering (ColorizePipeline._inline; docs/serving.md §8.3).
    inline_pixels: int = 1 << 19
    triton_timeout_s: float = 30.0  # a call's deadline when the client sent none (else the client's)
    health_poll_s: float = 1.0  # with 1 s probe timeouts: a dead or hung model is seen within 2 s
    metrics_port: int = 0  # 0 = no Prometheus endpoint
    redis_url: str = ""  # empty = no Restore service
    # HTTP/JSON API and the web page (service/gateway/http.py), in the gateway's own event loop.
    http_port: int = 0  # 0 = off; `make run` uses 8080. TLS and tokens as the gRPC port's (below)
    http_cors_origins: str = ""  # comma-separated origins allowed cross-origin; empty = no CORS
    # Restore (DIP jobs on the Redis bus; README "Restore").
    restore_max_pixels: int = 4_000_000  # input pixels, and output pixels for super-resolution
    restore_max_iterations: int = 20_000  # cap on fixed_iterations / auto_stop.max_iterations
    restore_max_queue: int = 64  # jobs waiting for a worker, all clients (then RESOURCE_EXHAUSTED)
    restore_max_jobs_per_client: int = 8  # a client's queued + running jobs (x-client-id, else peer host)
    restore_max_attempts: int = 2  # starts before a job whose workers keep dying is failed (ABORTED)
    restore_result_ttl_s: int = 3600  # how long a finished job's events and result stay readable
    # The workers' --visibility-timeout (the same value): when a worker counts as gone follows from it.
    restore_visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    # Security (README "Security"); all off by default, for `make run` on loopback.
    tls_cert: str = ""  # PEM certificate chain file; with tls_key, the gRPC and HTTP ports speak TLS only
    tls_key: str = ""  # PEM private key file of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mutual TLS)
    # "client-id token" lines (service/gateway/auth.py). Set: every RPC but health, and every HTTP call
    # but the page, /healthz and /openapi.json, needs `authorization: Bearer <token>`; the token's
    # client id is the Restore quota key and job owner.
    auth_tokens_file: str = ""
    reflection: str = ""  # "" = on unless auth is on; or a boolean (1/0, true/false, yes/no)
    # Key of the opaque worker labels clients see instead of worker names (several gateways: the same
    # key, for the same labels); empty = a random key per gateway process.
    worker_label_key: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("PRIORLAB_TLS_CERT and PRIORLAB_TLS_KEY go together: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("PRIORLAB_TLS_CLIENT_CA (mutual TLS) needs PRIORLAB_TLS_CERT and _KEY")
        if self.reflection.lower() not in ("", *_TRUE, *_FALSE):
            raise ValueError(f"PRIORLAB_REFLECTION={self.reflection!r} is not a boolean nor empty")

    @property
    def reflection_on(self) -> bool:
        """Server reflection: as set, else on exactly when bearer-token auth is off."""
        if not self.reflection:
            return not self.auth_tokens_file
        return self.reflection.lower() in _TRUE

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "PRIORLAB_") -> Settings:
        """Cast each `PRIORLAB_<FIELD>` that is set; a bad value names its variable."""
        values: dict[str, object] = {}
        for f in fields(cls):
            key = prefix + f.name.upper()
            if key not in environ:
                continue
            raw = environ[key]
            kind = type(getattr(cls, f.name))
            try:
                if kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(raw)
                    values[f.name] = raw.lower() in ("1", "true", "yes")
                else:
                    values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)  # type: ignore[arg-type]
