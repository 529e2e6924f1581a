"""Start a gateway process (`python -m service.gateway`, configured by `PRIORLAB_*`) and wait for its health.

`make run` runs the gateway inside the stack's own process; this is for the benchmarks and the
integration tests, which start gateways of several configurations against one Triton. A gateway with
TLS (`tls_cert`, `tls_key`, maybe `tls_client_ca` and `auth_tokens_file` in its settings) is started the
same way with a `ClientTls` saying how to reach it: the readiness probe then checks the gateway's
certificate against that CA (and shows a client certificate for mutual TLS), as any client would.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.launch.process import ManagedProcess, free_port

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a TLS gateway: the CA bundle that signed the gateway's certificate, and for
    mutual TLS a certificate (and key) of the client's own, signed by the gateway's client CA."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError(
                f"a client certificate and its key go together, got cert={self.cert} key={self.key}"
            )

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """For an HTTPS client (aiohttp's `ssl=`, urllib's `context=`)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if self.cert is not None:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context


@dataclass
class GatewayProcess:
    handle: ManagedProcess
    target: str
    tls: ClientTls | None = None
    http_url: str | None = None  # "http(s)://127.0.0.1:PORT" when the settings turn the HTTP API on

    @property
    def pid(self) -> int:
        return self.handle.pid

    def health(self, service: str = "") -> int:
        """The health status of `service` ("" = the whole gateway); grpc.RpcError if it does not answer."""
        with self.channel() as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status)

    def channel(self) -> grpc.Channel:
        """A gRPC channel to the gateway: over TLS with `tls`, else plaintext."""
        if self.tls is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.tls.grpc_credentials())

    def stop(self) -> None:
        self.handle.stop()


def start_gateway(
    settings: Mapping[str, str],
    log_dir: Path,
    *,
    name: str = "gateway",
    cwd: Path | None = None,
    wait_for: str | None = "",
    serving: bool = True,
    tls: ClientTls | None = None,
) -> GatewayProcess:
    """A gateway on a free port with `PRIORLAB_<KEY>` = value for each of `settings`.

    Waits until health for `wait_for` answers (None: does not wait), and is SERVING if `serving`; the
    health service needs no token, so a token file changes nothing here. With `tls_cert` in `settings`,
    `tls` says how to reach it (and for `tls_client_ca`, with a client certificate).
    """
    if settings.get("tls_cert") and tls is None:
        raise ValueError("a TLS gateway (tls_cert) needs tls=ClientTls(ca=...) for the readiness probe")
    if settings.get("tls_client_ca") and (tls is None or tls.cert is None):
        raise ValueError("a mutual-TLS gateway (tls_client_ca) needs tls=ClientTls(ca, cert, key)")
    if tls is not None and not settings.get("tls_cert"):
        raise ValueError("tls is given but the settings have no tls_cert: the gateway would be plaintext")
    port = free_port()
    env = {
        **os.environ,
        **{f"PRIORLAB_{k.upper()}": v for k, v in settings.items()},
        "PRIORLAB_PORT": str(port),
    }
    handle = ManagedProcess.spawn(
        name, [sys.executable, "-m", "service.gateway"], log_dir / f"{name}-{port}.log", env=env, cwd=cwd
    )
    http_port = int(settings.get("http_port", "0"))
    scheme = "https" if tls is not None else "http"
    http_url = f"{scheme}://127.0.0.1:{http_port}" if http_port else None
    gateway = GatewayProcess(handle, f"127.0.0.1:{port}", tls, http_url)
    if wait_for is None:
        return gateway

    def ready() -> bool:
        try:
            status = gateway.health(wait_for)
        except grpc.RpcError:
            return False
        return not serving or status == health_pb2.HealthCheckResponse.SERVING

    try:
        handle.wait_until(ready, READY_TIMEOUT_S, poll_s=0.2)
    except BaseException:
        gateway.stop()
        raise
    return gateway
