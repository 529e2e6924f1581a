"""Issues #16 and #17 over HTTP: the gRPC port's bearer tokens, job ownership and idempotency keys.

The gateway is the real one (`create_server` with `http_port` and a token file), so the Starlette app,
its middleware and uvicorn are what answer; the Restore tests use a real redis-server and play no
worker (a queued job is all they need). TLS over HTTP is in tests/integration/test_tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from service.bus.jobs import MAX_IDEMPOTENCY_KEY, JobBus, new_job_id, submitted_unix
from service.gateway.http import OPEN_PATHS, HttpApi
from service.gateway.http_openapi import openapi_document
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import restore_pb2, restore_pb2_grpc
from tests.service.gateway.test_colorizer import FakeBackend, gray_gradient, png

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"
SMALL = png(gray_gradient())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


JOB_ROUTES = [("GET", ""), ("GET", "/events"), ("POST", "/cancel")]  # read, watch, cancel a job


def same_age(message: str, job_id: str) -> str:
    """`message` without the job id and the seconds since its submission (they differ call to call)."""
    return re.sub(r"within \d+ s", "within N s", message.replace(job_id, "ID"))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


Body = Callable[[aiohttp.ClientSession, str, str], Awaitable[Any]]


def run_http(body: Body, **settings: Any) -> Any:
    """A gateway with the HTTP API; `body(session, http_base, grpc_target)`; a fresh bus if Redis is on."""

    async def main() -> Any:
        if settings.get("redis_url"):
            bus = JobBus.from_url(settings["redis_url"])
            await bus.redis.flushdb()
            await bus.close()
        config = Settings(port=0, http_port=free_port(), health_poll_s=0.05, **settings)
        gateway = await create_server(config, FakeBackend())
        try:
            if gateway.http is None:
                raise AssertionError("the gateway serves no HTTP")
            async with aiohttp.ClientSession() as session, asyncio.timeout(60):
                return await body(
                    session, f"http://127.0.0.1:{gateway.http.port}", f"127.0.0.1:{gateway.port}"
                )
        finally:
            await gateway.stop(0)

    return asyncio.run(main())


async def answer(response: aiohttp.ClientResponse) -> tuple[int, Any]:
    kind = response.headers.get("Content-Type", "")
    return response.status, await response.json() if kind.startswith("application/json") else None


def restore_json(**extra: Any) -> dict[str, Any]:
    return {"image": base64.b64encode(SMALL).decode(), "jpeg": {}, "fixed_iterations": 10, **extra}


# --- the token check ------------------------------------------------------------------------------


def test_an_api_call_needs_a_valid_token_the_page_and_health_do_not(tokens_file: Path) -> None:
    async def body(session: aiohttp.ClientSession, base: str, target: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for name, headers in [
            ("none", {}),
            ("wrong", bearer("not-a-known-token-0123")),
            ("basic", {"Authorization": f"Basic {ALICE}"}),
            ("alice", bearer(ALICE)),
            ("lower-case scheme", {"Authorization": f"bearer {ALICE}"}),
        ]:
            async with session.get(f"{base}/v1/models", headers=headers) as r:
                seen[name] = (*await answer(r), r.headers.get("WWW-Authenticate"))
                seen[f"{name} csp"] = r.headers.get("Content-Security-Policy")
        async with session.post(f"{base}/v1/colorize", data={"model": "eccv16"}) as r:
            seen["colorize"] = r.status
        async with session.get(f"{base}/v1/nothing") as r:
            seen["unknown path"] = r.status  # refused before routing: nothing is open by omission
        async with session.get(f"{base}/v1/nothing", headers=bearer(BOB)) as r:
            seen["unknown path with a token"] = r.status
        for path in ("/", "/healthz", "/static/app.js", "/openapi.json"):
            async with session.get(f"{base}{path}") as r:
                seen[path] = r.status
        return seen

    seen = run_http(body, auth_tokens_file=str(tokens_file))
    refusal = {
        "error": {
            "code": "UNAUTHENTICATED",
            "status": 401,
            "message": "this call needs `authorization: Bearer <token>` with a valid token",
        }
    }
    for name in ("none", "wrong", "basic"):
        assert seen[name] == (401, refusal, 'Bearer realm="priorlab"'), name
        assert "default-src 'none'" in seen[f"{name} csp"]  # a refusal gets the security headers too
    status, reply, challenge = seen["alice"]
    assert status == 200 and challenge is None and reply["default"] == "eccv16"
    assert seen["lower-case scheme"][0] == 200
    assert seen["colorize"] == 401 and seen["unknown path"] == 401
    assert seen["unknown path with a token"] == 404
    assert [seen[p] for p in ("/", "/healthz", "/static/app.js", "/openapi.json")] == [200] * 4


def test_without_tokens_the_api_is_open() -> None:
    async def body(session: aiohttp.ClientSession, base: str, target: str) -> int:
        async with session.get(f"{base}/v1/models") as r:
            return r.status

    assert run_http(body) == 200


def test_a_cors_preflight_needs_no_token_and_may_send_one(tokens_file: Path) -> None:
    async def body(session: aiohttp.ClientSession, base: str, target: str) -> tuple[int, str, str]:
        headers = {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key",
        }
        async with session.options(f"{base}/v1/restore", headers=headers) as r:
            allowed = r.headers.get("Access-Control-Allow-Headers", "")
            return r.status, r.headers.get("Access-Control-Allow-Origin", ""), allowed.lower()

    status, origin, allowed = run_http(
        body, auth_tokens_file=str(tokens_file), http_cors_origins="https://app.example"
    )
    assert status == 200 and origin == "https://app.example"
    assert "authorization" in allowed and "idempotency-key" in allowed


def test_the_api_is_never_open_by_omission() -> None:
    with pytest.raises(ValueError, match="given no token table"):
        HttpApi(None, Settings(auth_tokens_file="tokens"), FakeBackend(), None)  # type: ignore[arg-type]


def test_the_openapi_document_says_which_routes_need_the_token() -> None:
    document = openapi_document()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            open_ = operation.get("security", document["security"]) == []
            assert open_ == (path in OPEN_PATHS), (path, method)
            assert ("401" in operation["responses"]) == (not open_), (path, method)
    (key,) = [
        p for p in document["paths"]["/v1/restore"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    ]
    assert key["in"] == "header" and key["schema"]["maxLength"] == MAX_IDEMPOTENCY_KEY


# --- Restore: owner and quota key -----------------------------------------------------------------


def test_jobs_belong_to_the_token_client(redis_url: str, tokens_file: Path) -> None:
    async def body(session: aiohttp.ClientSession, base: str, target: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        bus = JobBus.from_url(redis_url)
        try:
            # The self-asserted header is ignored: the job is alice's, and counts against alice's quota.
            headers = {**bearer(ALICE), "X-Client-Id": "bob"}
            async with session.post(f"{base}/v1/restore", json=restore_json(), headers=headers) as r:
                seen["submit"] = await answer(r)
            job_id = seen["submit"][1]["job_id"]
            seen["owner"] = await bus.redis.hget(f"restore:job:{job_id}", "client")
            async with session.post(f"{base}/v1/restore", json=restore_json(), headers=headers) as r:
                seen["over quota"] = await answer(r)

            # Another client's job is 404 for Bob, in the words of an id that never was (one tagged for
            # alice, of the same time): live, past the result TTL, or vanished, he learns nothing of it.
            old = restore_pb2.RestoreJob(
                job_id=new_job_id(time.time() - 7200, "alice"), client_id="alice", max_attempts=1
            )
            old.request.CopyFrom(restore_pb2.RestoreRequest(image=SMALL, jpeg=restore_pb2.JpegParams()))
            await bus.submit(old, max_queue=10, max_per_client=10, ttl_s=3600)

            async def on_every_route(token: str, job: str) -> list[tuple[int, str]]:
                found = []
                for method, path in JOB_ROUTES:
                    url = f"{base}/v1/restore/{job}{path}"
                    async with session.request(method, url, headers=bearer(token)) as r:
                        status, reply = await answer(r)
                        found.append((status, same_age(reply["error"]["message"], job)))
                return found

            async def bob_on(theirs: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
                unknown = new_job_id(submitted_unix(theirs) or 0, "alice")
                return await on_every_route(BOB, theirs), await on_every_route(BOB, unknown)

            seen["bob on her live one"] = await bob_on(job_id)
            seen["bob on her old one"] = await bob_on(old.job_id)
            seen["state"] = await bus.redis.hget(f"restore:job:{job_id}", "state")  # bob's cancel did nothing

            # Alice can read, watch and cancel hers.
            async with session.get(f"{base}/v1/restore/{old.job_id}", headers=bearer(ALICE)) as r:
                seen["alice reads"] = r.status
            async with session.post(f"{base}/v1/restore/{job_id}/cancel", headers=bearer(ALICE)) as r:
                seen["alice cancels"] = await answer(r)
            async with session.get(f"{base}/v1/restore/{job_id}/events", headers=bearer(ALICE)) as r:
                seen["alice watches"] = (r.status, (await r.text()).count("event: failure"))

            # Her record vanishes (what Redis restarted without persistence does): lost, to her alone.
            seen["deleted"] = await bus.redis.delete(f"restore:job:{job_id}", f"restore:job:{job_id}:events")
            seen["bob on her vanished one"] = await bob_on(job_id)
            seen["alice on her vanished one"] = await on_every_route(ALICE, job_id)
        finally:
            await bus.close()
        return seen

    seen = run_http(
        body, redis_url=redis_url, auth_tokens_file=str(tokens_file), restore_max_jobs_per_client=1
    )
    assert seen["submit"][0] == 202 and seen["owner"] == b"alice"
    status, reply = seen["over quota"]
    assert status == 429 and "client 'alice'" in reply["error"]["message"]
    for name in ("bob on her live one", "bob on her old one", "bob on her vanished one"):
        theirs, unknown = seen[name]
        assert theirs == unknown, (name, theirs, unknown)
        for status, message in theirs:
            assert status == 404 and message.startswith("job 'ID' not found (unknown"), (name, message)
    assert seen["state"] == b"queued"
    assert seen["alice reads"] == 202
    assert seen["alice cancels"] == (200, {"cancelled": True})
    assert seen["alice watches"] == (200, 1)
    assert seen["deleted"] == 2
    for status, message in seen["alice on her vanished one"]:  # DATA_LOSS is 500 (http_status.py)
        assert status == 500 and message.startswith("job ID was lost: its record vanished"), (status, message)


def test_an_idempotency_key_returns_the_first_job_over_http_and_grpc(
    redis_url: str, tokens_file: Path
) -> None:
    async def body(session: aiohttp.ClientSession, base: str, target: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        key = {"Idempotency-Key": "order-42"}
        for name, token in [("first", ALICE), ("retry", ALICE), ("bob", BOB)]:
            headers = {**bearer(token), **key}
            async with session.post(f"{base}/v1/restore", json=restore_json(), headers=headers) as r:
                seen[name] = (*await answer(r), r.headers.get("Idempotent-Replayed"), r.headers["Location"])
        # The key is SubmitRestore's idempotency_key: a gRPC retry with it gets the same job.
        async with grpc.aio.insecure_channel(target) as channel:
            request = restore_pb2.RestoreRequest(
                image=SMALL, jpeg=restore_pb2.JpegParams(), idempotency_key="order-42"
            )
            reply = await restore_pb2_grpc.RestorerStub(channel).SubmitRestore(
                request, timeout=10, metadata=(("authorization", f"Bearer {ALICE}"),)
            )
            seen["grpc"] = (reply.job_id, reply.HasField("queued"))
        bus = JobBus.from_url(redis_url)
        try:
            seen["queued"] = await bus.queue_length()
        finally:
            await bus.close()
        for name, extra, fields in [
            ("too long", {"Idempotency-Key": "k" * (MAX_IDEMPOTENCY_KEY + 1)}, {}),
            ("differs", key, {"idempotency_key": "order-43"}),
        ]:
            headers = {**bearer(ALICE), **extra}
            async with session.post(f"{base}/v1/restore", json=restore_json(**fields), headers=headers) as r:
                seen[name] = await answer(r)
        return seen

    seen = run_http(body, redis_url=redis_url, auth_tokens_file=str(tokens_file))
    status, first, replayed, location = seen["first"]
    job_id = first["job_id"]
    assert status == 202 and first["queued"]["position"] == 1 and replayed is None
    status, retry, replayed, location = seen["retry"]
    assert status == 202 and retry["job_id"] == job_id and "queued" not in retry and replayed == "true"
    assert location == f"/v1/restore/{job_id}" and retry["links"]["events"] == f"/v1/restore/{job_id}/events"
    assert seen["bob"][1]["job_id"] != job_id  # a key is its client's own
    assert seen["grpc"] == (job_id, False)
    assert seen["queued"] == 2  # alice's one job and bob's
    status, reply = seen["too long"]
    assert status == 400 and f"at most {MAX_IDEMPOTENCY_KEY} printable ASCII" in reply["error"]["message"]
    status, reply = seen["differs"]
    assert status == 400 and "Idempotency-Key header ('order-42')" in reply["error"]["message"]
