"""TLS and mutual TLS on the gateway's gRPC port (issue #16), with a throwaway CA made here by `openssl`.

The gateway runs in this process (no Triton, no Redis: the health service is what is called); the
command-line client's `connect` is checked against it too.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract import ModelSpec
from service.client import build_parser, call_metadata, connect
from service.gateway.server import create_server
from service.gateway.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


class NoTriton:
    async def ready(self, spec: ModelSpec) -> bool:
        return False

    async def close(self) -> None:
        pass


NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(pki: Path, name: str, subject: str, extensions: str) -> None:
    """`name`.key and `name`.pem, signed by the CA in `pki`."""
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-new", *NEW_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki
    )
    sign = ("-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext")
    _openssl("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem", cwd=pki)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate and a stranger's CA."""
    pki = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        subject = f"/CN=priorlab test {ca}"
        files = ("-keyout", f"{ca}.key", "-out", f"{ca}.pem")
        _openssl("req", "-x509", *NEW_KEY, *files, "-days", "1", "-subj", subject, cwd=pki)
    _issue(pki, "server", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _issue(pki, "client", "/CN=alice", "extendedKeyUsage=clientAuth\n")
    return pki


def run_gateway(body: Callable[[str], Awaitable[Any]], **settings: Any) -> Any:
    async def main() -> Any:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05, **settings), NoTriton())  # type: ignore[arg-type]
        try:
            return await body(f"127.0.0.1:{gateway.port}")
        finally:
            await gateway.stop(0)

    return asyncio.run(main())


async def check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """The health check's status code over `channel` (OK when the call got through)."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def credentials(pki: Path, *, client_cert: bool = False, ca: str = "ca") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / f"{ca}.pem").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.pem").read_bytes() if client_cert else None,
    )


def tls_settings(pki: Path, **extra: str) -> dict[str, str]:
    return {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key"), **extra}


def test_tls_calls_work_and_plaintext_to_the_tls_port_fails(pki: Path) -> None:
    async def body(target: str) -> dict[str, grpc.StatusCode]:
        async with grpc.aio.secure_channel(target, credentials(pki)) as channel:
            tls = await check(channel)
        async with grpc.aio.insecure_channel(target) as channel:
            plain = await check(channel)
        async with grpc.aio.secure_channel(target, credentials(pki, ca="other-ca")) as channel:
            untrusted = await check(channel)  # the client does not trust the server's issuer
        return {"tls": tls, "plain": plain, "untrusted": untrusted}

    codes = run_gateway(body, **tls_settings(pki))
    assert codes == {
        "tls": grpc.StatusCode.OK,
        "plain": grpc.StatusCode.UNAVAILABLE,
        "untrusted": grpc.StatusCode.UNAVAILABLE,
    }


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Path) -> None:
    async def body(target: str) -> dict[str, grpc.StatusCode]:
        async with grpc.aio.secure_channel(target, credentials(pki, client_cert=True)) as channel:
            with_cert = await check(channel)
        async with grpc.aio.secure_channel(target, credentials(pki)) as channel:
            without = await check(channel)
        return {"with": with_cert, "without": without}

    codes = run_gateway(body, **tls_settings(pki, tls_client_ca=str(pki / "ca.pem")))
    assert codes == {"with": grpc.StatusCode.OK, "without": grpc.StatusCode.UNAVAILABLE}


def test_the_command_line_client_speaks_mutual_tls_and_sends_its_token(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "cli-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"cli {token}\n")
    (tmp_path / "token").write_text(token + "\n")
    monkeypatch.delenv("PRIORLAB_TOKEN", raising=False)

    def cli_check(target: str, *flags: str) -> tuple[grpc.StatusCode, Any]:
        args = build_parser().parse_args(["cancel", "0", "--target", target, *flags])
        with connect(args) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as e:
                return e.code(), call_metadata(args)
        return grpc.StatusCode.OK, call_metadata(args)

    async def body(target: str) -> list[tuple[grpc.StatusCode, Any]]:
        mtls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "client.pem")]
        mtls += ["--tls-key", str(pki / "client.key"), "--token-file", str(tmp_path / "token")]
        return [
            await asyncio.to_thread(cli_check, target, *mtls),
            await asyncio.to_thread(cli_check, target, "--tls-ca", str(pki / "ca.pem")),
            await asyncio.to_thread(cli_check, target),
        ]

    results = run_gateway(
        body, **tls_settings(pki, tls_client_ca=str(pki / "ca.pem"), auth_tokens_file=str(tokens))
    )
    assert results[0] == (grpc.StatusCode.OK, (("authorization", f"Bearer {token}"),))
    assert results[1][0] == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert results[2][0] == grpc.StatusCode.UNAVAILABLE  # plaintext
