"""TLS and mutual TLS on the gateway's gRPC and HTTP ports (issues #16, #17), with a throwaway CA made
here by `openssl`.

The gRPC tests run the gateway in this process (no Triton, no Redis: the health service is what is
called); the command-line client's `connect` is checked against it too. The HTTP test starts a real
gateway process with `start_gateway` (TLS, a client CA and tokens; Redis for Restore, no Triton) and calls
its HTTPS API as any client would.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from contract import ModelSpec
from service.bus.jobs import JobBus, new_job_id, submitted_unix
from service.client import build_parser, call_metadata, connect
from service.gateway.auth import http_ssl_context
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.launch.gateway import ClientTls, start_gateway
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import restore_pb2
from tests.integration.conftest import REPO

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


def test_the_http_ports_tls_is_the_grpc_ports(pki: Path, tmp_path: Path) -> None:
    context = http_ssl_context(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert http_ssl_context(str(pki / "server.pem"), str(pki / "server.key")).verify_mode == ssl.CERT_NONE
    with pytest.raises(OSError, match=r"could not load the TLS certificate .*missing\.pem"):
        http_ssl_context(str(tmp_path / "missing.pem"), str(pki / "server.key"))
    with pytest.raises(OSError, match="could not load"):
        http_ssl_context(str(pki / "server.pem"), str(pki / "client.key"))  # not the certificate's key
    with pytest.raises(OSError, match=r"could not read the client CA bundle .*none\.pem"):
        http_ssl_context(str(pki / "server.pem"), str(pki / "server.key"), str(tmp_path / "none.pem"))


# --- HTTP: a gateway process with TLS, a client CA and tokens --------------------------------------

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"
CALL_TIMEOUT = aiohttp.ClientTimeout(total=20)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def same_age(message: str, job_id: str) -> str:
    """`message` without the job id and the seconds since its submission (they differ call to call)."""
    return re.sub(r"within \d+ s", "within N s", message.replace(job_id, "ID"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def test_start_gateway_needs_to_know_how_to_reach_a_tls_gateway(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs tls=ClientTls"):
        start_gateway(tls_settings(pki), tmp_path)
    with pytest.raises(ValueError, match="mutual-TLS gateway"):
        start_gateway(
            tls_settings(pki, tls_client_ca=str(pki / "ca.pem")), tmp_path, tls=ClientTls(pki / "ca.pem")
        )


def test_the_http_api_over_mutual_tls_with_tokens(pki: Path, redis_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    tokens.chmod(0o600)
    settings = tls_settings(
        pki,
        tls_client_ca=str(pki / "ca.pem"),
        auth_tokens_file=str(tokens),
        redis_url=redis_url,
        http_port=str(free_port()),
        health_poll_s="0.2",
    )
    client = ClientTls(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    # No Triton: the Colorizer is NOT_SERVING, but the probe gets its answer over mutual TLS.
    gateway = start_gateway(settings, tmp_path, cwd=REPO, serving=False, tls=client)
    try:
        with gateway.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert gateway.http_url is not None and gateway.http_url.startswith("https://127.0.0.1:")
        seen = asyncio.run(_https_calls(gateway.http_url, client, pki, redis_url))
    finally:
        gateway.stop()
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING

    status, submitted = seen["alice submits"]
    assert status == 202 and submitted["queued"]["position"] == 1
    status, reply, challenge = seen["no token"]
    assert status == 401 and reply["error"]["code"] == "UNAUTHENTICATED" and challenge.startswith("Bearer")
    assert seen["wrong token"][0] == 401
    assert seen["alice reads hers"][0] == 202 and seen["alice reads hers"][1]["state"] == "queued"
    for name in ("bob reads hers", "bob reads her old one", "bob reads her vanished one"):
        theirs, unknown = seen[name]  # another's job is exactly an unknown id: NOT_FOUND, whatever its state
        assert theirs == unknown and theirs[0] == 404 and "not found (unknown" in theirs[1], (name, theirs)
    assert seen["alice reads her old one"] == 202
    status, message = seen["alice reads her vanished one"]
    assert status == 500 and message.startswith("job ID was lost"), (status, message)  # DATA_LOSS
    assert seen["health, no token"] == 503 and seen["page, no token"] == 200  # open (NOT_SERVING: no Triton)
    for name in ("no client certificate", "plaintext", "untrusted server"):
        refused = seen[name]
        assert isinstance(refused, aiohttp.ClientError), (name, refused)
        assert not isinstance(refused, TimeoutError), (name, refused)  # refused, not left hanging


async def _https_calls(base: str, client: ClientTls, pki: Path, redis_url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    image = base64.b64encode((REPO / "samples" / "aitzgorri_96.png").read_bytes()).decode()
    job = {"image": image, "jpeg": {}, "fixed_iterations": 10}

    connector = aiohttp.TCPConnector(ssl=client.ssl_context())
    # Each call bounded on its own, so a hang fails at the line of the call that hung.
    async with aiohttp.ClientSession(connector=connector, timeout=CALL_TIMEOUT) as session:
        async with session.post(f"{base}/v1/restore", json=job, headers=bearer(ALICE)) as r:
            seen["alice submits"] = (r.status, await r.json())
        job_id = seen["alice submits"][1]["job_id"]
        async with session.get(f"{base}/v1/models") as r:
            seen["no token"] = (r.status, await r.json(), r.headers.get("WWW-Authenticate", ""))
        async with session.get(f"{base}/v1/models", headers=bearer("not-a-token-0123456789")) as r:
            seen["wrong token"] = (r.status,)
        async with session.get(f"{base}/healthz") as r:
            seen["health, no token"] = r.status
        async with session.get(f"{base}/") as r:
            seen["page, no token"] = r.status
        async with session.get(f"{base}/v1/restore/{job_id}", headers=bearer(ALICE)) as r:
            seen["alice reads hers"] = (r.status, await r.json())

        # A job of alice's from before the result TTL, put on the bus directly.
        bus = JobBus.from_url(redis_url)
        try:
            old = restore_pb2.RestoreJob(
                job_id=new_job_id(time.time() - 7200, "alice"), client_id="alice", max_attempts=1
            )
            old.request.CopyFrom(restore_pb2.RestoreRequest(jpeg=restore_pb2.JpegParams()))
            await bus.submit(old, max_queue=10, max_per_client=10, ttl_s=3600)

            async def read(token: str, job_id_: str) -> tuple[int, str]:
                async with session.get(f"{base}/v1/restore/{job_id_}", headers=bearer(token)) as r:
                    return r.status, same_age((await r.json())["error"]["message"], job_id_)

            async def bob_reads(theirs: str) -> list[tuple[int, str]]:
                # Beside an id of the same time and owner tag that never was.
                return [
                    await read(BOB, j) for j in (theirs, new_job_id(submitted_unix(theirs) or 0, "alice"))
                ]

            seen["bob reads hers"] = await bob_reads(job_id)
            seen["bob reads her old one"] = await bob_reads(old.job_id)
            async with session.get(f"{base}/v1/restore/{old.job_id}", headers=bearer(ALICE)) as r:
                seen["alice reads her old one"] = r.status
            # Her record vanishes (what Redis restarted without persistence does): lost, to her alone.
            await bus.redis.delete(f"restore:job:{job_id}", f"restore:job:{job_id}:events")
            seen["bob reads her vanished one"] = await bob_reads(job_id)
            seen["alice reads her vanished one"] = await read(ALICE, job_id)
        finally:
            await bus.close()

    # Refused at the handshake: no client certificate, no TLS at all, a server the client does not trust.
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    untrusted = ClientTls(pki / "other-ca.pem", pki / "client.pem", pki / "client.key").ssl_context()
    contexts: list[tuple[str, str, ssl.SSLContext | bool]] = [
        ("no client certificate", base, no_cert),
        ("plaintext", base.replace("https://", "http://"), False),
        ("untrusted server", base, untrusted),
    ]
    for name, url, context in contexts:
        try:
            async with (
                aiohttp.ClientSession(timeout=CALL_TIMEOUT) as session,
                session.get(f"{url}/healthz", ssl=context) as r,
            ):
                seen[name] = r.status
        except aiohttp.ClientError as e:
            seen[name] = e
    return seen
