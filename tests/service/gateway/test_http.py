"""The HTTP/JSON API against the fake Triton backend (and a real redis-server for Restore).

The gateway is the real one (`create_server` with `http_port`), so these go through the same pipeline,
validation and error table as gRPC; where a worker is needed, the test plays it on the bus.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from PIL import Image
from skimage import color
from starlette.routing import Mount, Route

from contract import ModelSpec
from service.bus.jobs import JobBus, failure_event
from service.errors import (
    STATUS_CODES,
    DeadlineExceeded,
    PriorlabError,
    ResourceExhausted,
    Unavailable,
)
from service.gateway import http
from service.gateway.http import HttpApi
from service.gateway.http_openapi import openapi_document
from service.gateway.http_status import HTTP_STATUS, http_status
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2
from tests.service.gateway.test_colorizer import TARGET_AB, FakeBackend, gray_gradient, png

Body = Callable[[aiohttp.ClientSession, str], Awaitable[Any]]


@contextlib.asynccontextmanager
async def _dumped_on_timeout(seconds: float) -> AsyncIterator[None]:
    """asyncio.timeout that prints every task's stack before failing, to say where it hung."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        for task in asyncio.all_tasks():
            print("pending:", task, file=sys.stderr)
            task.print_stack(file=sys.stderr)
        raise


def run_http(backend: FakeBackend, body: Body, **settings: Any) -> Any:
    """A gateway with the HTTP API on a free port; `body(session, base_url)`."""

    async def main() -> Any:
        config = Settings(port=0, http_port=free_port(), health_poll_s=0.05, **settings)
        gateway = await create_server(config, backend)
        try:
            assert gateway.http is not None
            # Bounded: a hang (seen once, under load, in a full run) fails with the tasks' stacks.
            async with aiohttp.ClientSession() as session, _dumped_on_timeout(60):
                return await body(session, f"http://127.0.0.1:{gateway.http.port}")
        finally:
            async with _dumped_on_timeout(30):
                await gateway.stop(0)

    return asyncio.run(main())


def form(image: bytes, **fields: Any) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("image", image, filename="in.png", content_type="image/png")
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            data.add_field(key, str(item))
    return data


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def median_ab(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(np.median(color.rgb2lab(rgb)[..., 1:], axis=(0, 1)))


IMAGE = png(gray_gradient())


# --- Colorize -------------------------------------------------------------------------------------


def test_multipart_upload_returns_the_image_with_its_metadata_in_headers() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any, bytes]:
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE, output_format="png")) as r:
            return r.status, r.headers.copy(), await r.read()

    status, headers, data = run_http(FakeBackend(), body)
    assert status == 200 and headers["Content-Type"] == "image/png"
    out = decode(data)
    assert out.shape == (60, 90, 3)
    np.testing.assert_allclose(median_ab(out), TARGET_AB, atol=2.0)
    assert headers["X-Priorlab-Model"] == "eccv16" and headers["X-Priorlab-Checkpoint"] == "fake-checkpoint"
    assert headers["X-Priorlab-Trained"] == "false" and headers["X-Priorlab-Temperature"] == "0.38"
    assert "total;dur=" in headers["Server-Timing"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert "Access-Control-Allow-Origin" not in headers  # no CORS unless configured
    assert "Server" not in headers and headers["X-Content-Type-Options"] == "nosniff"


def test_json_body_is_the_grpc_request_and_json_reply_is_the_grpc_response() -> None:
    request = colorize_pb2.ColorizeRequest(image=IMAGE, temperature=0.5, working_size=128, quality=80)

    async def body(session: aiohttp.ClientSession, base: str) -> Any:
        payload = {
            "image": base64.b64encode(IMAGE).decode(),
            "temperature": 0.5,
            "working_size": 128,
            "output_format": "jpeg",
            "quality": 80,
        }
        headers = {"Accept": "application/json"}
        async with session.post(f"{base}/v1/colorize", json=payload, headers=headers) as r:
            assert r.status == 200, await r.text()
            reply = await r.json()
        return reply

    reply = run_http(FakeBackend(), body)
    assert reply["model"] == "eccv16" and reply["format"] == "IMAGE_FORMAT_JPEG"
    assert reply["working_size"] == 128
    assert reply["temperature"] == pytest.approx(0.5) and reply["width"] == 90 and reply["height"] == 60
    assert set(reply["timings"]) == {"decode_ms", "triton_ms", "postprocess_ms", "total_ms"}
    assert decode(base64.b64decode(reply["image"])).shape == (60, 90, 3)
    assert request.temperature == pytest.approx(0.5)


def test_hints_from_the_form_and_from_json_colour_their_point() -> None:
    hint_json = [{"x": 45, "y": 30, "color": "#30a040", "patch_size": 9}]  # a green; TARGET_AB is blue

    async def body(session: aiohttp.ClientSession, base: str) -> list[np.ndarray]:
        outs = []
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE, hint="45,30,#30a040,9")) as r:
            assert r.status == 200 and r.headers["X-Priorlab-Model"] == "siggraph17", await r.text()
            outs.append(decode(await r.read()))
        payload = {"image": base64.b64encode(IMAGE).decode(), "hints": hint_json}
        async with session.post(f"{base}/v1/colorize", json=payload) as r:
            assert r.status == 200, await r.text()
            outs.append(decode(await r.read()))
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE, hints=json.dumps(hint_json))) as r:
            assert r.status == 200, await r.text()
            outs.append(decode(await r.read()))
        return outs

    for out in run_http(FakeBackend(), body):
        at = color.rgb2lab(out[29:32, 44:47])[..., 1:].mean(axis=(0, 1))
        far = color.rgb2lab(out[:5, :5])[..., 1:].mean(axis=(0, 1))
        assert at[0] < -10 and at[1] > 5, at  # toward green (-a, +b), away from the blue elsewhere
        assert np.abs(far - TARGET_AB).max() < 5


def test_an_image_body_takes_the_form_fields_from_the_query_string() -> None:
    """`curl --data-binary @photo -H 'Content-Type: image/...'`: the same request as the form's."""

    async def body(session: aiohttp.ClientSession, base: str) -> list[tuple[int, Any, bytes]]:
        replies = []
        for kind, query in (
            ("image/png", "?output_format=png&temperature=0.5&working_size=128"),
            ("application/octet-stream", "?hint=45,30,%2330a040,9&hint=5,5,%2330a040,3&output_format=png"),
            ("image/jpeg", ""),  # the declared type is not trusted: the codec reads the PNG signature
        ):
            async with session.post(
                f"{base}/v1/colorize{query}", data=IMAGE, headers={"Content-Type": kind}
            ) as r:
                replies.append((r.status, r.headers.copy(), await r.read()))
        return replies

    (status, headers, data), (hinted_status, hinted_headers, hinted), (as_jpeg, _, _) = run_http(
        FakeBackend(), body
    )
    assert status == 200 and headers["Content-Type"] == "image/png", data
    assert headers["X-Priorlab-Temperature"] == "0.5" and headers["X-Priorlab-Working-Size"] == "128"
    np.testing.assert_allclose(median_ab(decode(data)), TARGET_AB, atol=2.0)
    assert hinted_status == 200 and hinted_headers["X-Priorlab-Model"] == "siggraph17", hinted
    out = decode(hinted)
    for y, x in ((30, 45), (5, 5)):  # both repeated hints reached the model
        at = color.rgb2lab(out[y - 1 : y + 2, x - 1 : x + 2])[..., 1:].mean(axis=(0, 1))
        assert at[0] < -10 and at[1] > 5, (y, x, at)
    assert as_jpeg == 200


@pytest.mark.parametrize(
    ("kind", "query", "needle"),
    [
        ("image/png", "?bogus=1", 'no field named "bogus"'),
        ("image/png", "?temperature=1.5", "temperature must be in (0, 1], got 1.5"),
        ("image/png", "?image=abc", "the image is the body, not a query field"),
        ("text/plain", "", "got 'text/plain'"),
    ],
)
def test_a_bad_image_body_request_names_the_value(kind: str, query: str, needle: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
        async with session.post(
            f"{base}/v1/colorize{query}", data=IMAGE, headers={"Content-Type": kind}
        ) as r:
            return r.status, await r.json()

    status, reply = run_http(FakeBackend(), body)
    assert status == 400 and needle in reply["error"]["message"], reply


@pytest.mark.parametrize(
    ("fields", "status", "code", "needle"),
    [
        ({"temperature": "1.5"}, 400, "INVALID_ARGUMENT", "temperature must be in (0, 1], got 1.5"),
        ({"model": "nope"}, 404, "NOT_FOUND", "model 'nope' is not served"),
        ({"working_size": "100"}, 400, "INVALID_ARGUMENT", "got 100"),
        ({"hint": "1,2,red"}, 400, "INVALID_ARGUMENT", "#rrggbb"),
        ({"model": "eccv16", "hint": "1,2,#ff0000"}, 400, "INVALID_ARGUMENT", "takes no colour hints"),
        ({"bogus": "1"}, 400, "INVALID_ARGUMENT", 'no field named "bogus"'),
    ],
)
def test_a_bad_request_gets_the_grpc_status_and_message(
    fields: dict[str, str], status: int, code: str, needle: str
) -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE, **fields)) as r:
            return r.status, await r.json()

    got_status, reply = run_http(FakeBackend(), body)
    assert got_status == status and reply["error"]["code"] == code and reply["error"]["status"] == status
    assert needle in reply["error"]["message"]


def test_a_clients_long_value_is_echoed_cut_short() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> list[str]:
        found = []
        for fields in ({"hint": "1,2," + "z" * 20_000}, {"temperature": "9" * 20_000 + "x"}):
            async with session.post(f"{base}/v1/colorize", data=form(IMAGE, **fields)) as r:
                found.append((await r.json())["error"]["message"])
        return found

    for message in run_http(FakeBackend(), body):
        assert len(message) < 600, message


def test_the_message_is_the_one_grpc_sends() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[str, str]:
        async with session.post(f"{base}/v1/colorize", data=form(b"not an image")) as r:
            http_message = (await r.json())["error"]["message"]
        port = int(base.rsplit(":", 1)[1])
        del port
        return http_message, ""

    http_message, _ = run_http(FakeBackend(), body)

    async def grpc_body() -> str:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05), FakeBackend())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                stub = colorize_pb2_grpc.ColorizerStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Colorize(colorize_pb2.ColorizeRequest(image=b"not an image"), timeout=10)
                return info.value.details() or ""
        finally:
            await gateway.stop(0)

    assert http_message == asyncio.run(grpc_body()) and "image is not a valid file" in http_message


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (ResourceExhausted("Triton's queue is full"), 429, "1"),
        (Unavailable("Triton is down"), 503, None),
        (DeadlineExceeded("too slow"), 504, None),
    ],
)
def test_backend_failures_map_to_http(error: PriorlabError, status: int, retry_after: str | None) -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, str | None, Any]:
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE)) as r:
            return r.status, r.headers.get("Retry-After"), await r.json()

    got, retry, reply = run_http(FakeBackend(error=error), body)
    assert (got, retry, reply["error"]["message"]) == (status, retry_after, str(error))


@dataclass
class SlowBackend(FakeBackend):
    """Takes `delay_s` per inference and records whether a call was cancelled."""

    delay_s: float = 5.0
    cancelled: int = 0

    async def infer(self, spec: ModelSpec, inputs: dict[str, np.ndarray], *, timeout_s: float) -> Any:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().infer(spec, inputs, timeout_s=timeout_s)


def test_a_client_that_leaves_cancels_its_call() -> None:
    """The page aborts a superseded request: its inference stops instead of finishing for nobody."""
    backend = SlowBackend()

    async def body(session: aiohttp.ClientSession, base: str) -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await session.post(f"{base}/v1/colorize", data=form(IMAGE))
        start = time.perf_counter()
        while not backend.cancelled and time.perf_counter() - start < 3:
            await asyncio.sleep(0.02)
        return time.perf_counter() - start

    assert run_http(backend, body) < 3 and backend.cancelled == 1


def test_an_unexpected_error_is_500_without_details() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE)) as r:
            return r.status, await r.json()

    status, reply = run_http(FakeBackend(error=RuntimeError("secret")), body)  # type: ignore[arg-type]
    assert status == 500 and reply["error"]["code"] == "INTERNAL" and "secret" not in json.dumps(reply)


def test_every_error_kind_has_its_standard_http_status() -> None:
    expected = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503}
    expected |= {"DEADLINE_EXCEEDED": 504, "CANCELLED": 499, "ABORTED": 409, "INTERNAL": 500}
    assert {name: HTTP_STATUS[grpc.StatusCode[name]] for name in expected} == expected
    for kind, name in STATUS_CODES.items():  # every kind of the one table has an HTTP status
        assert http_status(kind("x")) == HTTP_STATUS[grpc.StatusCode[name]] >= 400


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> list[tuple[int, str]]:
        found = []
        big = b"x" * 5000
        async with session.post(
            f"{base}/v1/colorize", data=big, headers={"Content-Type": "application/json"}
        ) as r:
            found.append((r.status, (await r.json())["error"]["message"]))

        async def chunks() -> Any:  # no Content-Length: refused once the count passes the limit
            for _ in range(10):
                yield big

        async with session.post(
            f"{base}/v1/colorize", data=chunks(), headers={"Content-Type": "application/json"}
        ) as r:
            found.append((r.status, (await r.json())["error"]["message"]))
        return found

    (declared, streamed) = run_http(FakeBackend(), body, max_message_bytes=4096)
    assert declared == (413, "request body is 5000 bytes, over the limit of 4096 bytes")
    assert streamed == (413, "request body is over the limit of 4096 bytes")


def test_pixels_are_limited_from_the_header() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, str]:
        async with session.post(f"{base}/v1/colorize", data=form(IMAGE)) as r:
            return r.status, (await r.json())["error"]["message"]

    status, message = run_http(FakeBackend(), body, max_pixels=1000)
    assert status == 400 and "90x60 = 5400 pixels, over the limit of 1000" in message


# --- SuggestColors, models, health, page, OpenAPI ------------------------------------------------


def test_suggest_returns_colours_with_hex() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> Any:
        async with session.post(f"{base}/v1/suggest", data=form(IMAGE, x=10, y=20, k=3, seed=1)) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    reply = run_http(FakeBackend(), body)
    assert reply["model"] == "siggraph17" and 1 <= len(reply["colors"]) <= 3
    for entry in reply["colors"]:
        rgb = entry["color"]
        assert entry["hex"] == "#{:02x}{:02x}{:02x}".format(rgb.get("r", 0), rgb.get("g", 0), rgb.get("b", 0))
        assert 0 < entry["confidence"] <= 1


def test_suggest_outside_the_image_is_invalid() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
        payload = {"image": base64.b64encode(IMAGE).decode(), "x": 500, "y": 1}
        async with session.post(f"{base}/v1/suggest", json=payload) as r:
            return r.status, await r.json()

    status, reply = run_http(FakeBackend(), body)
    assert status == 400 and "500" in reply["error"]["message"]


def test_models_health_and_page() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with session.get(f"{base}/v1/models") as r:
            seen["models"] = await r.json()
        async with session.get(f"{base}/healthz") as r:
            seen["health"] = (r.status, await r.json())
        async with session.get(f"{base}/") as r:
            csp = r.headers["Content-Security-Policy"]
            seen["page"] = (r.status, r.headers["Content-Type"], csp, await r.text())
        async with session.get(f"{base}/static/app.js") as r:
            seen["js"] = (r.status, r.headers["Content-Type"])
        async with session.get(f"{base}/v1/nothing") as r:
            seen["missing"] = r.status
        return seen

    seen = run_http(FakeBackend(), body)
    names = {m["name"]: m for m in seen["models"]["models"]}
    assert set(names) == {"eccv16", "siggraph17", "larsson16"} and names["siggraph17"]["hints"]
    assert names["eccv16"]["default_temperature"] == pytest.approx(0.38)
    assert seen["health"] == (200, {"status": "SERVING", "services": {"priorlab.v1.Colorizer": "SERVING"}})
    status, kind, csp, html = seen["page"]
    assert status == 200 and kind.startswith("text/html") and "default-src 'none'" in csp
    assert '<script src="/static/app.js"' in html and "<style" not in html and " style=" not in html
    assert "onclick" not in html and seen["js"][0] == 200 and "javascript" in seen["js"][1]
    assert seen["missing"] == 404


def test_health_is_503_while_triton_is_not_ready() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> int:
        async with session.get(f"{base}/healthz") as r:
            return r.status

    assert run_http(FakeBackend(is_ready=False), body) == 503


def test_cors_only_when_configured() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[str | None, str | None]:
        headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        async with session.options(f"{base}/v1/colorize", headers=headers) as r:
            allowed = r.headers.get("Access-Control-Allow-Origin")
        evil = {**headers, "Origin": "https://evil.example"}
        async with session.options(f"{base}/v1/colorize", headers=evil) as r:
            refused = r.headers.get("Access-Control-Allow-Origin")
        return allowed, refused

    allowed = run_http(FakeBackend(), body, http_cors_origins="https://app.example")
    assert allowed == ("https://app.example", None)


def test_openapi_names_exactly_the_routes() -> None:
    app = HttpApi(None, Settings(), FakeBackend(), None).app()  # type: ignore[arg-type]
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and not isinstance(route, Mount)
        for method in set(route.methods or ()) - {"HEAD"}
    }
    document = openapi_document()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    assert document["openapi"].startswith("3.")

    async def body(session: aiohttp.ClientSession, base: str) -> Any:
        async with session.get(f"{base}/openapi.json") as r:
            return await r.json()

    assert run_http(FakeBackend(), body) == document


def test_the_gateway_refuses_to_start_on_a_taken_http_port() -> None:
    async def main() -> str:
        first = await create_server(Settings(port=0, http_port=free_port()), FakeBackend())
        try:
            assert first.http is not None
            with pytest.raises(OSError) as info:
                await create_server(Settings(port=0, http_port=first.http.port), FakeBackend())
            return str(info.value)
        finally:
            await first.stop(0)

    assert "could not serve HTTP" in asyncio.run(main())


# --- Restore --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


SMALL = png(np.full((16, 24, 3), 128, np.uint8))
MASK = np.full((16, 24), 255, np.uint8)
MASK[4:8] = 0


async def play_worker(
    bus: JobBus, outcome: PriorlabError | None, progress: int = 2
) -> restore_pb2.RestoreJob:
    """The worker's part: claim, start, a few progress events, then a result or `outcome`."""
    while not (claims := await bus.claim("w", visibility_s=30, block_s=0.1)):
        pass
    start = await bus.start("w", claims[0])
    assert start.outcome == "run" and start.job is not None
    job_id = claims[0].job_id
    started = restore_pb2.Started(worker="w", attempt=1, device="cpu")
    await bus.publish(
        "w", job_id, restore_pb2.JobEvent(event=restore_pb2.RestoreEvent(job_id=job_id, started=started))
    )
    for i in range(1, progress + 1):
        step = restore_pb2.Progress(
            iteration=i * 5, max_iterations=10, loss=0.5 / i, eta_s=1.0, preview=SMALL
        )
        event = restore_pb2.RestoreEvent(job_id=job_id, progress=step)
        await bus.publish("w", job_id, restore_pb2.JobEvent(event=event))
    if outcome is None:
        result = restore_pb2.RestoreResult(job_id=job_id, image=SMALL, width=24, height=16, iterations_run=10)
        event = restore_pb2.JobEvent(event=restore_pb2.RestoreEvent(job_id=job_id, result=result))
        assert await bus.finish("w", claims[0], event, "done")
    else:
        assert await bus.finish("w", claims[0], failure_event(outcome), "failed")
    return start.job


RestoreBody = Callable[[aiohttp.ClientSession, str, JobBus], Awaitable[Any]]


def run_restore(redis_url: str, body: RestoreBody, **settings: Any) -> Any:
    async def with_bus(session: aiohttp.ClientSession, base: str) -> Any:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        await bus.ensure_groups()
        try:
            return await body(session, base, bus)
        finally:
            await bus.close()

    return run_http(FakeBackend(), with_bus, redis_url=redis_url, **settings)


def parse_sse(text: str) -> list[tuple[str, str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return events


def test_submit_watch_and_fetch_a_job(redis_url: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        fields = {"task": "inpaint", "style": "region", "iterations": 10, "preview": "true", "seed": 7}
        data = form(SMALL, **fields)
        data.add_field("mask", png(MASK), filename="mask.png", content_type="image/png")
        async with session.post(f"{base}/v1/restore", data=data, headers={"X-Client-Id": "alice"}) as r:
            seen["submit"] = (r.status, await r.json(), r.headers["Location"])
        job_id = seen["submit"][1]["job_id"]
        async with session.get(f"{base}/v1/restore/{job_id}") as r:
            seen["pending"] = (r.status, await r.json())
        worker = asyncio.create_task(play_worker(bus, None))
        async with session.get(f"{base}/v1/restore/{job_id}/events") as r:
            seen["events"] = (r.status, r.headers["Content-Type"], parse_sse(await r.text()))
        seen["job"] = await worker
        async with session.get(f"{base}/v1/restore/{job_id}/events", headers={"Last-Event-ID": "3"}) as r:
            seen["resumed"] = [name for _, name, _ in parse_sse(await r.text())]
        async with session.get(f"{base}/v1/restore/{job_id}") as r:
            seen["result"] = (r.status, r.headers["Content-Type"], await r.read())
        async with session.get(f"{base}/v1/restore/{job_id}", headers={"Accept": "application/json"}) as r:
            seen["result_json"] = await r.json()
        async with session.post(f"{base}/v1/restore/{job_id}/cancel") as r:
            seen["late_cancel"] = (r.status, await r.json())
        return seen

    seen = run_restore(redis_url, body)
    status, submitted, location = seen["submit"]
    job_id = submitted["job_id"]
    assert status == 202 and location == f"/v1/restore/{job_id}" and submitted["queued"]["position"] == 1
    assert submitted["links"]["events"] == f"/v1/restore/{job_id}/events"
    job = seen["job"]
    assert job.client_id == "alice" and job.request.fixed_iterations == 10 and job.request.seed == 7
    assert job.request.inpaint.style == restore_pb2.INPAINT_STYLE_REGION and job.request.preview
    assert job.request.inpaint.mask == png(MASK)
    assert seen["pending"][0] == 202 and seen["pending"][1]["state"] == "queued"
    assert seen["pending"][1]["event"]["queued"]["position"] == 1
    status, kind, events = seen["events"]
    assert status == 200 and kind.startswith("text/event-stream")
    assert [name for _, name, _ in events] == ["queued", "started", "progress", "progress", "result"]
    assert [int(i) for i, _, _ in events] == [1, 2, 3, 4, 5]
    progress = events[2][2]["progress"]
    assert progress["iteration"] == 5 and progress["max_iterations"] == 10
    assert base64.b64decode(progress["preview"]) == SMALL
    assert base64.b64decode(events[-1][2]["result"]["image"]) == SMALL
    assert seen["resumed"] == ["progress", "result"]
    assert seen["result"] == (200, "image/png", SMALL)
    assert seen["result_json"]["iterations_run"] == 10 and seen["result_json"]["width"] == 24
    assert seen["late_cancel"] == (200, {"cancelled": False})


def test_a_quiet_stream_gets_keep_alive_comments(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_S", 0.2)

    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> str:
        async with session.post(f"{base}/v1/restore", data=form(SMALL, task="jpeg")) as r:
            job_id = (await r.json())["job_id"]
        async with session.get(f"{base}/v1/restore/{job_id}/events") as r:
            await asyncio.sleep(0.7)  # queued, no worker: nothing but keep-alives
            await play_worker(bus, None, progress=0)
            return await r.text()

    text = run_restore(redis_url, body)
    assert text.count(": keep-alive\n\n") >= 2
    assert [name for _, name, _ in parse_sse(text)] == ["queued", "started", "result"]


def test_cancel_a_queued_job_ends_its_stream_with_499(redis_url: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        payload = {"image": base64.b64encode(SMALL).decode(), "jpeg": {}, "fixed_iterations": 10}
        async with session.post(f"{base}/v1/restore", json=payload) as r:
            job_id = (await r.json())["job_id"]
        async with session.post(f"{base}/v1/restore/{job_id}/cancel") as r:
            seen["cancel"] = (r.status, await r.json())
        async with session.get(f"{base}/v1/restore/{job_id}/events") as r:
            seen["events"] = parse_sse(await r.text())
        async with session.get(f"{base}/v1/restore/{job_id}") as r:
            seen["fetch"] = (r.status, await r.json())
        return seen

    seen = run_restore(redis_url, body)
    assert seen["cancel"] == (200, {"cancelled": True})
    (_, name, data) = seen["events"][-1]
    assert name == "failure" and data["code"] == "CANCELLED" and data["status"] == 499
    assert "was cancelled by POST" in data["message"]
    assert seen["fetch"][0] == 499 and seen["fetch"][1]["error"]["code"] == "CANCELLED"


def test_a_worker_failure_reaches_http_with_its_status(redis_url: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> tuple[int, Any]:
        payload = {"image": base64.b64encode(SMALL).decode(), "jpeg": {}}
        async with session.post(f"{base}/v1/restore", json=payload) as r:
            job_id = (await r.json())["job_id"]
        await play_worker(bus, DeadlineExceeded("ran out of time"), progress=0)
        async with session.get(f"{base}/v1/restore/{job_id}?wait=5") as r:
            return r.status, await r.json()

    status, reply = run_restore(redis_url, body)
    assert status == 504
    assert reply["error"] == {"code": "DEADLINE_EXCEEDED", "status": 504, "message": "ran out of time"}


@pytest.mark.parametrize(
    ("path", "method", "status", "needle"),
    [
        ("/v1/restore/0123abcd/events", "get", 404, "not found"),
        ("/v1/restore/0123abcd", "get", 404, "not found"),
        ("/v1/restore/0123abcd/cancel", "post", 404, "not found"),
        ("/v1/restore/bad-id!/cancel", "post", 400, "job_id must be"),
    ],
)
def test_unknown_jobs(redis_url: str, path: str, method: str, status: int, needle: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> tuple[int, Any]:
        async with session.request(method, f"{base}{path}") as r:
            return r.status, await r.json()

    got, reply = run_restore(redis_url, body)
    assert got == status and needle in reply["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"task": "blur"}, "task must be one of"),
        ({"task": "super_resolve", "factor": "3"}, "factor must be 2, 4 or 8, got 3"),
        ({"task": "inpaint"}, "inpaint.mask"),
        ({"task": "jpeg", "iterations": "999999"}, "fixed_iterations"),
    ],
)
def test_restore_validation_is_the_grpc_one(redis_url: str, fields: dict[str, str], needle: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> tuple[int, Any]:
        async with session.post(f"{base}/v1/restore", data=form(SMALL, **fields)) as r:
            return r.status, await r.json()

    status, reply = run_restore(redis_url, body)
    assert status == 400 and needle in reply["error"]["message"], reply


def test_an_image_body_submits_a_restore_job_with_its_fields_from_the_query(redis_url: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> Any:
        query = "?task=denoise&sigma=25&iterations=10&seed=3"
        async with session.post(
            f"{base}/v1/restore{query}", data=SMALL, headers={"Content-Type": "image/png"}
        ) as r:
            assert r.status == 202, await r.text()
        return await play_worker(bus, None)

    job = run_restore(redis_url, body)
    assert job.request.image == SMALL and job.request.denoise.sigma == 25
    assert job.request.fixed_iterations == 10 and job.request.seed == 3


def test_the_client_quota_is_429_with_retry_after(redis_url: str) -> None:
    async def body(session: aiohttp.ClientSession, base: str, bus: JobBus) -> list[tuple[int, str | None]]:
        found = []
        for _ in range(3):
            async with session.post(f"{base}/v1/restore", data=form(SMALL, task="jpeg")) as r:
                found.append((r.status, r.headers.get("Retry-After")))
        return found

    found = run_restore(redis_url, body, restore_max_jobs_per_client=2)
    assert found == [(202, None), (202, None), (429, "1")]


def test_no_redis_no_restore() -> None:
    async def body(session: aiohttp.ClientSession, base: str) -> tuple[int, Any]:
        async with session.post(f"{base}/v1/restore", data=form(SMALL, task="jpeg")) as r:
            return r.status, await r.json()

    status, reply = run_http(FakeBackend(), body)
    assert status == 503 and "PRIORLAB_REDIS_URL" in reply["error"]["message"]
