"""Issue #16, ask 5: bearer tokens, job ownership, opaque worker labels, reflection, Redis's password.

TLS itself is in tests/integration/test_tls.py. The gateway runs in this process (no Triton: Colorize is
never served here); the Restore tests use a real redis-server.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from contract import ModelSpec
from service.bus.jobs import JobBus, new_job_id, owner_tag
from service.errors import echo
from service.gateway.auth import TokenTable, as_client, authenticated_client, worker_label
from service.gateway.restorer import public_event
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.gateway.triton import _create_region, _owner_only
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2, restore_pb2_grpc

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def restore_request() -> restore_pb2.RestoreRequest:
    return restore_pb2.RestoreRequest(image=png(), jpeg=restore_pb2.JpegParams(), fixed_iterations=10)


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


class NoTriton:
    async def ready(self, spec: ModelSpec) -> bool:
        return False

    async def close(self) -> None:
        pass


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# client-id token\nalice {ALICE}\n\nbob   {BOB}  # the second client\n")
    path.chmod(0o600)
    return path


def run_gateway(body: Callable[[grpc.aio.Channel], Awaitable[Any]], **settings: Any) -> Any:
    async def main() -> Any:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05, **settings), NoTriton())  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                return await body(channel)
        finally:
            await gateway.stop(0)

    return asyncio.run(main())


async def code_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


async def read_all(stream: Any) -> list[Any]:
    return [item async for item in stream]


# --- the token table ---


def test_the_token_file_maps_tokens_to_clients(tokens_file: Path) -> None:
    table = TokenTable.load(tokens_file)
    assert table.clients == {"alice", "bob"}
    assert table.client_for(ALICE) == "alice" and table.client_for(BOB) == "bob"
    assert table.client_for(ALICE + "x") is None and table.client_for("") is None
    assert table.client_of(bearer(ALICE)) == "alice"
    assert table.client_of((("authorization", f"bearer  {BOB} "),)) == "bob"  # scheme case, spaces
    assert table.client_of((("authorization", ALICE),)) is None  # no scheme
    assert table.client_of((("x-client-id", "alice"),)) is None and table.client_of(None) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("alice\n", "expected `client-id token`, got 1 fields"),
        ("alice tok en-0123456789abcdef\n", "got 3 fields"),
        ("alice short\n", "at least 16 printable ASCII"),
        (f"alice {ALICE}\nbob {ALICE}\n", "listed twice"),
        ("# nothing\n", "no tokens"),
    ],
)
def test_a_bad_token_file_fails_start_up_naming_the_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle) as info:
        TokenTable.load(path)
    assert str(path) in str(info.value)


def test_the_http_header_goes_through_the_same_parser(tokens_file: Path) -> None:
    table = TokenTable.load(tokens_file)
    assert table.client_of_header(f"Bearer {ALICE}") == "alice"
    assert table.client_of_header(f"bearer  {BOB} ") == "bob"  # scheme case, spaces
    assert table.client_of_header(ALICE) is None and table.client_of_header(f"Basic {ALICE}") is None
    assert table.client_of_header("Bearer ") is None and table.client_of_header(None) is None
    assert table.client_of_header("Bearer not-a-known-token-0123") is None


def test_one_client_may_have_two_tokens_for_rotation(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nalice {BOB}\n")
    table = TokenTable.load(path)
    assert table.client_for(ALICE) == table.client_for(BOB) == "alice"


def test_security_settings_are_checked_and_reflection_follows_auth() -> None:
    with pytest.raises(ValueError, match="TLS_CERT and PRIORLAB_TLS_KEY go together"):
        Settings(tls_cert="c.pem")
    with pytest.raises(ValueError, match="CLIENT_CA"):
        Settings(tls_client_ca="ca.pem")
    with pytest.raises(ValueError, match="PRIORLAB_REFLECTION='maybe'"):
        Settings.from_env({"PRIORLAB_REFLECTION": "maybe"})
    # The HTTP API has the gRPC port's security now (tests/service/gateway/test_http_auth.py).
    assert Settings(http_port=8080, auth_tokens_file="t", tls_cert="c", tls_key="k", tls_client_ca="ca")
    assert Settings().reflection_on and not Settings(auth_tokens_file="t").reflection_on
    assert Settings(auth_tokens_file="t", reflection="1").reflection_on
    assert not Settings(reflection="no").reflection_on


def test_the_client_context_is_per_call() -> None:
    assert authenticated_client() is None
    with as_client("alice"):
        assert authenticated_client() == "alice"
    assert authenticated_client() is None


# --- the interceptor ---


def test_without_a_valid_token_every_call_but_health_is_unauthenticated(tokens_file: Path) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        colorizer = colorize_pb2_grpc.ColorizerStub(channel)
        restorer = restore_pb2_grpc.RestorerStub(channel)
        request = colorize_pb2.ColorizeRequest(image=b"not an image")
        unauthenticated = [
            colorizer.Colorize(request, timeout=10),
            colorizer.Colorize(request, timeout=10, metadata=bearer("not-a-known-token-at-all")),
            colorizer.Colorize(request, timeout=10, metadata=(("x-client-id", "alice"),)),
            restorer.SubmitRestore(restore_request(), timeout=10),
            read_all(restorer.WatchRestore(restore_pb2.WatchRestoreRequest(job_id="ab12"), timeout=10)),
        ]
        for call in unauthenticated:
            code, details = await code_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
        # With a token the call reaches the servicer (and fails there, on its bytes).
        code, _ = await code_of(colorizer.Colorize(request, timeout=10, metadata=bearer(ALICE)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status in (
            health_pb2.HealthCheckResponse.NOT_SERVING,
            health_pb2.HealthCheckResponse.SERVING,
        )
        # Reflection is off by default when auth is on.
        code, _ = await code_of(reflect(channel, reflection_pb2.ServerReflectionRequest(list_services="")))
        assert code == grpc.StatusCode.UNIMPLEMENTED

    run_gateway(body, auth_tokens_file=str(tokens_file), redis_url=f"redis://127.0.0.1:{free_port()}/0")


# --- reflection ---


async def reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest, **kwargs: Any
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([request]), timeout=10, **kwargs)
    responses = [response async for response in call]
    return responses[0]


def test_reflection_lists_the_public_api_and_never_the_bus_messages() -> None:
    async def body(channel: grpc.aio.Channel) -> tuple[Any, ...]:
        services = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        internal = await reflect(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol="priorlab.v1.JobEvent")
        )
        by_name = await reflect(
            channel, reflection_pb2.ServerReflectionRequest(file_by_filename="priorlab/v1/restore.proto")
        )
        restorer = await reflect(
            channel,
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="priorlab.v1.Restorer"),
        )
        return services, internal, by_name, restorer

    services, internal, by_name, restorer = run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    names = {s.name for s in services.list_services_response.service}
    assert {"priorlab.v1.Colorizer", "priorlab.v1.Restorer", "grpc.health.v1.Health"} <= names
    assert internal.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    for response in (by_name, restorer):
        files = response.file_descriptor_response.file_descriptor_proto
        text = b"".join(files)
        assert b"RestoreRequest" in text and b"WatchRestoreRequest" in text
        assert b"JobEvent" not in text and b"RestoreJob" not in text and b"JobFailure" not in text


def test_reflection_can_be_turned_off() -> None:
    async def body(channel: grpc.aio.Channel) -> grpc.StatusCode:
        code, _ = await code_of(reflect(channel, reflection_pb2.ServerReflectionRequest(list_services="")))
        return code

    assert run_gateway(body, reflection="0") == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_turned_on_with_auth_needs_a_token(tokens_file: Path) -> None:
    async def body(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, Any]:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        code, _ = await code_of(reflect(channel, request))
        return code, await reflect(channel, request, metadata=bearer(BOB))

    code, listed = run_gateway(body, auth_tokens_file=str(tokens_file), reflection="1")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "priorlab.v1.Colorizer" in {s.name for s in listed.list_services_response.service}


# --- Restore: the authenticated client owns its jobs and is the quota key ---


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def test_jobs_belong_to_the_authenticated_client(redis_url: str, tokens_file: Path) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        stub = restore_pb2_grpc.RestorerStub(channel)
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        try:
            # The self-asserted header is ignored: the job is alice's, and counts against alice's quota.
            submitted = await stub.SubmitRestore(
                restore_request(), timeout=10, metadata=bearer(ALICE, ("x-client-id", "bob"))
            )
            job_id = submitted.job_id
            assert await bus.redis.hget(f"restore:job:{job_id}", "client") == b"alice"
            code, details = await code_of(
                stub.SubmitRestore(
                    restore_request(), timeout=10, metadata=bearer(ALICE, ("x-client-id", "x"))
                )
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "client 'alice'" in details
            assert (await stub.SubmitRestore(restore_request(), timeout=10, metadata=bearer(BOB))).job_id

            # Another client's job is NOT_FOUND for Bob, in the words of an id that never was: live or
            # vanished, he learns nothing about it (an id he makes up is tagged for him, or NOT_FOUND).
            assert job_id[13:21] == owner_tag("alice") and job_id[13:21] != owner_tag("bob")
            unknown = new_job_id(time.time(), "alice")
            watch = restore_pb2.WatchRestoreRequest
            cancel = restore_pb2.CancelRestoreRequest

            def calls(token: str) -> list[Callable[[str], Awaitable[Any]]]:
                return [
                    lambda j: read_all(
                        stub.WatchRestore(watch(job_id=j), timeout=10, metadata=bearer(token))
                    ),
                    lambda j: stub.CancelRestore(cancel(job_id=j), timeout=10, metadata=bearer(token)),
                ]

            async def bob_sees_nothing() -> None:
                for make in calls(BOB):
                    theirs, none = await code_of(make(job_id)), await code_of(make(unknown))
                    assert theirs[0] == none[0] == grpc.StatusCode.NOT_FOUND, (theirs, none)
                    assert theirs[1].replace(job_id, "ID") == none[1].replace(unknown, "ID")
                    assert f"job {echo(job_id)} not found (unknown" in theirs[1]

            await bob_sees_nothing()
            assert (
                await bus.redis.hget(f"restore:job:{job_id}", "state") == b"queued"
            )  # bob's cancel did nothing

            # Alice can watch and cancel her job.
            reply = await stub.CancelRestore(cancel(job_id=job_id), timeout=10, metadata=bearer(ALICE))
            assert reply.cancelled
            code, _ = await code_of(
                read_all(stub.WatchRestore(watch(job_id=job_id), timeout=10, metadata=bearer(ALICE)))
            )
            assert code == grpc.StatusCode.CANCELLED

            # Her record vanishes (what Redis restarted without persistence does): lost, to her alone.
            assert await bus.redis.delete(f"restore:job:{job_id}", f"restore:job:{job_id}:events") == 2
            await bob_sees_nothing()
            for make in calls(ALICE):
                code, details = await code_of(make(job_id))
                assert code == grpc.StatusCode.DATA_LOSS and f"job {job_id} was lost" in details
            # An id Bob makes up with his own tag tells him only about his own (non-existent) jobs.
            mine = new_job_id(time.time(), "bob")
            assert (await code_of(calls(BOB)[0](mine)))[0] == grpc.StatusCode.DATA_LOSS
            assert (await code_of(calls(ALICE)[0](mine)))[0] == grpc.StatusCode.NOT_FOUND
        finally:
            await bus.close()

    run_gateway(body, redis_url=redis_url, auth_tokens_file=str(tokens_file), restore_max_jobs_per_client=1)


def test_without_auth_the_header_is_still_the_quota_key(redis_url: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        stub = restore_pb2_grpc.RestorerStub(channel)
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        try:
            job_id = (
                await stub.SubmitRestore(restore_request(), timeout=10, metadata=(("x-client-id", "svc"),))
            ).job_id
            assert await bus.redis.hget(f"restore:job:{job_id}", "client") == b"svc"
            # Trusted networks: the job id alone lets anyone cancel it (README "Security").
            cancelled = await stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=10)
            assert cancelled.cancelled
        finally:
            await bus.close()

    run_gateway(body, redis_url=redis_url)


# --- worker names stay in the logs; clients see labels ---


def test_clients_see_an_opaque_worker_label(caplog: pytest.LogCaptureFixture) -> None:
    name = "gpu-host-7.internal-31337"
    started = restore_pb2.RestoreEvent(job_id="j", started=restore_pb2.Started(worker=name, attempt=1))
    result = restore_pb2.RestoreEvent(job_id="j", result=restore_pb2.RestoreResult(worker=name, job_id="j"))
    queued = restore_pb2.RestoreEvent(job_id="j", queued=restore_pb2.Queued(position=1))
    key = b"k"
    with caplog.at_level("INFO", logger="service.gateway.restorer"):
        shown_started = public_event(restore_pb2.JobEvent(event=started), key)
    shown_result = public_event(restore_pb2.JobEvent(event=result), key)
    label = worker_label(name, key)
    assert shown_started.started.worker == shown_result.result.worker == label
    assert label.startswith("worker-") and "gpu-host" not in label and "31337" not in label
    assert worker_label(name, b"other") != label and worker_label("", key) == ""
    assert public_event(restore_pb2.JobEvent(event=queued), key) == queued
    assert name in caplog.text and label in caplog.text  # operators can map a label back


# --- Redis: requirepass; the gateway's shared-memory regions are the gateway user's only ---


def test_redis_with_a_password_refuses_clients_without_it(tmp_path: Path) -> None:
    password = "s3cretPassw0rd"
    server = RedisServer.start(tmp_path, password=password)
    try:
        assert server.ping() and server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        assert password not in " ".join(server.command)  # in the 0600 config file, not on a command line
        assert stat.S_IMODE((tmp_path / "redis.conf").stat().st_mode) == 0o600
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=server.port).ping()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        server.stop()


def test_shared_memory_regions_are_owner_only(tmp_path: Path) -> None:
    loose = tmp_path / "region"
    loose.write_bytes(b"\0" * 16)
    loose.chmod(0o644)
    _owner_only("region", str(tmp_path))
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    key = f"priorlab_test_{os.getpid()}"
    handle = _create_region(key, 1 << 16)
    try:
        assert stat.S_IMODE(os.stat(f"/dev/shm/{key}").st_mode) == 0o600
    finally:
        from tritonclient.utils import shared_memory

        shared_memory.destroy_shared_memory_region(handle)
