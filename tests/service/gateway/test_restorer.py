"""Restorer gateway logic without workers: validation, client ids, failure mapping, UNAVAILABLE.

Where a worker is needed, the test plays it on the bus (claim, start, finish): no torch.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from contract import ModelSpec
from service.bus import wire
from service.bus.jobs import JobBus, failure_event, new_job_id, submitted_unix, tagged_for
from service.errors import (
    STATUS_CODES,
    Aborted,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    PriorlabError,
)
from service.gateway.restorer import RESTORER_SERVICE, build_job, client_id, public_event
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.launch.process import free_port
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import restore_pb2, restore_pb2_grpc


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGE = png(np.full((16, 24, 3), 128, np.uint8))
MASK = np.full((16, 24), 255, np.uint8)
MASK[4:8] = 0
BAD_STYLE = restore_pb2.InpaintParams(mask=png(MASK), style=9)  # type: ignore[arg-type]  # out of range


def request(**kwargs: Any) -> restore_pb2.RestoreRequest:
    return restore_pb2.RestoreRequest(**{"image": IMAGE, "jpeg": restore_pb2.JpegParams(), **kwargs})


def job(req: restore_pb2.RestoreRequest, settings: Settings | None = None) -> restore_pb2.RestoreJob:
    return build_job(req, settings or Settings(), client="c", now=100.0, time_remaining_s=None)


class TestBuildJob:
    def test_wraps_a_valid_request(self) -> None:
        req = request(denoise=restore_pb2.DenoiseParams(sigma=25), fixed_iterations=10, priority=3)
        settings = Settings(restore_max_attempts=3, restore_max_iterations=500)
        built = build_job(req, settings, client="alice", now=100.0, time_remaining_s=2.5)
        assert built.request == req and built.client_id == "alice" and len(built.job_id) == 41
        assert tagged_for(built.job_id, "alice") and submitted_unix(built.job_id) == 100.0  # the owner's id
        assert built.deadline_unix == 102.5 and built.submitted_unix == 100.0
        assert built.max_attempts == 3 and built.max_iterations == 500
        assert job(req).deadline_unix == 0.0  # no deadline

    def test_inpaint_mask_and_styles(self) -> None:
        params = restore_pb2.InpaintParams(mask=png(MASK), style=restore_pb2.INPAINT_STYLE_REGION)
        job(request(inpaint=params))

    @pytest.mark.parametrize(
        ("kwargs", "needle"),
        [
            ({"image": b""}, "image is empty"),
            ({"image": b"GIF89a..."}, "image is not a valid file"),
            ({"jpeg": None}, "task is not set"),
            ({"denoise": restore_pb2.DenoiseParams(sigma=-1)}, "denoise.sigma must be in (0, 255)"),
            ({"denoise": restore_pb2.DenoiseParams(sigma=0)}, "denoise.sigma"),
            ({"denoise": restore_pb2.DenoiseParams(sigma=300)}, "got 300"),
            (
                {"super_resolve": restore_pb2.SuperResolveParams(factor=3)},
                "super_resolve.factor must be 2, 4",
            ),
            ({"super_resolve": restore_pb2.SuperResolveParams()}, "got 0"),
            ({"inpaint": restore_pb2.InpaintParams()}, "inpaint.mask: image is empty"),
            (
                {"inpaint": restore_pb2.InpaintParams(mask=png(MASK[:8]))},
                "inpaint.mask is 24x8, the image is 24x16",
            ),
            ({"inpaint": restore_pb2.InpaintParams(mask=png(MASK * 0))}, "inpaint.mask: mask marks every"),
            ({"inpaint": BAD_STYLE}, "inpaint.style 9"),
            ({"fixed_iterations": 20_001}, "fixed_iterations must be in 1..20000, got 20001"),
            ({"auto_stop": restore_pb2.AutoStopParams(max_iterations=20_001)}, "auto_stop.max_iterations"),
        ],
    )
    def test_bad_requests_name_the_field(self, kwargs: dict[str, Any], needle: str) -> None:
        req = request()
        if kwargs.pop("jpeg", True) is None:
            req.ClearField("jpeg")
        req.MergeFrom(restore_pb2.RestoreRequest(**{k: v for k, v in kwargs.items() if k != "image"}))
        if "image" in kwargs:
            req.image = kwargs["image"]
        with pytest.raises(InvalidArgument) as info:
            job(req)
        assert needle in str(info.value)

    def test_pixel_limits_cover_the_sr_output(self) -> None:
        with pytest.raises(InvalidArgument, match="over the limit of 300 pixels"):
            job(request(), Settings(restore_max_pixels=300))
        with pytest.raises(InvalidArgument, match="makes a 96x64 output"):
            job(
                request(super_resolve=restore_pb2.SuperResolveParams(factor=4)),
                Settings(restore_max_pixels=400),
            )


def test_client_id_from_metadata_else_peer_host() -> None:
    assert client_id((("x-client-id", "svc-a"),), "ipv4:10.0.0.7:5123") == "svc-a"
    assert client_id((("other", "x"),), "ipv4:10.0.0.7:5123") == "ipv4:10.0.0.7"
    assert client_id(None, "ipv6:[::1]:5123") == "ipv6:[::1]"
    assert client_id(None, "unix:/tmp/s") == "unix:/tmp/s"


@pytest.mark.parametrize("error", [Cancelled, DeadlineExceeded, Aborted, InvalidArgument, Internal])
def test_failures_are_raised_again_as_their_kind(error: type[PriorlabError]) -> None:
    with pytest.raises(error, match="why") as info:
        public_event(failure_event(error("why")))
    assert type(info.value) is error
    event = restore_pb2.RestoreEvent(job_id="a", queued=restore_pb2.Queued(position=1))
    assert public_event(restore_pb2.JobEvent(event=event)) == event


class NoTriton:
    async def ready(self, spec: ModelSpec) -> bool:
        return False

    async def close(self) -> None:
        pass


def run_gateway(body: Callable[[restore_pb2_grpc.RestorerStub], Awaitable[Any]], **settings: Any) -> Any:
    return run_on_channel(lambda channel: body(restore_pb2_grpc.RestorerStub(channel)), **settings)


def run_on_channel(body: Callable[[grpc.aio.Channel], Awaitable[Any]], **settings: Any) -> Any:
    async def main() -> Any:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05, **settings), NoTriton())  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                return await body(channel)
        finally:
            await gateway.stop(0)

    return asyncio.run(main())


def test_redis_unreachable_is_unavailable_on_every_rpc() -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> list[grpc.StatusCode]:
        codes = []
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: stub.SubmitRestore(request(), timeout=10),
            lambda: stub.Restore(request(), timeout=10),
            lambda: stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id="ab12"), timeout=10),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            codes.append(info.value.code())
        for stream in (
            stub.RestoreStream(request(), timeout=10),
            stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id="ab12"), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stream:
                    pass
            codes.append(info.value.code())
        return codes

    codes = run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 5


def test_stream_handlers_map_errors_too() -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.RestoreStream(
                request(super_resolve=restore_pb2.SuperResolveParams(factor=3))
            ):
                pass
        return info.value.code(), info.value.details() or ""

    code, details = run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "super_resolve.factor" in details


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


def test_a_failure_in_the_worker_reaches_the_client_with_its_status(redis_url: str) -> None:
    """Every kind, through the real path: worker -> Redis -> gateway -> interceptor -> gRPC client."""

    async def fail_next_job(bus: JobBus, error: PriorlabError) -> None:  # the worker's part of `_job`
        while not (claims := await bus.claim("w", visibility_s=30, block_s=0.1)):
            pass
        assert (await bus.start("w", claims[0])).outcome == "run"
        assert await bus.finish("w", claims[0], failure_event(error), "failed")

    async def body(stub: restore_pb2_grpc.RestorerStub) -> dict[str, tuple[grpc.StatusCode, str]]:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        await bus.ensure_groups()
        seen = {}
        try:
            for kind in STATUS_CODES:
                worker = asyncio.create_task(fail_next_job(bus, kind(f"{kind.__name__} in the worker")))
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Restore(request(), timeout=10)
                try:  # a Restore that failed before queueing leaves the worker waiting: say why
                    await asyncio.wait_for(worker, 10)
                except TimeoutError:
                    pytest.fail(f"no job reached the worker: Restore got {info.value!r}")
                seen[kind.__name__] = (info.value.code(), info.value.details() or "")
        finally:
            await bus.close()
        return seen

    seen = run_gateway(body, redis_url=redis_url)
    assert seen == {
        kind.__name__: (grpc.StatusCode[name], f"{kind.__name__} in the worker")
        for kind, name in STATUS_CODES.items()
    }


def test_no_redis_url_no_restorer() -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitRestore(request(), timeout=10)
        return info.value.code()

    assert run_gateway(body) == grpc.StatusCode.UNIMPLEMENTED


# --- issue #16 ---


def test_an_undecodable_request_is_invalid_argument_not_unknown() -> None:
    async def body(channel: grpc.aio.Channel) -> list[tuple[grpc.StatusCode, str]]:
        seen = []
        for method in ("SubmitRestore", "WatchRestore"):
            path = f"/priorlab.v1.Restorer/{method}"
            call: Any = channel.unary_unary(path) if method == "SubmitRestore" else channel.unary_stream(path)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                reply = call(b"\xff\xff\xff", timeout=10)  # a truncated varint: not a message
                if method == "SubmitRestore":
                    await reply
                else:
                    async for _ in reply:
                        pass
            seen.append((info.value.code(), info.value.details() or ""))
        return seen

    for code, details in run_on_channel(body, redis_url=f"redis://127.0.0.1:{free_port()}/0"):
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid protobuf message" in details


def test_a_huge_job_id_is_invalid_argument_with_a_bounded_message() -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> list[tuple[grpc.StatusCode, str]]:
        seen = []
        huge = "a" * 10_000
        for call in (
            lambda: stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=huge), timeout=10),
            lambda: stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=huge), timeout=10).read(),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            seen.append((info.value.code(), info.value.details() or ""))
        return seen

    for code, details in run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0"):
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # was RESOURCE_EXHAUSTED: a 10 KB status message
        assert len(details) < 200 and "…(10000 chars)" in details


def test_restore_validation_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a 2000² PNG blocked the loop for up to 129 ms: it runs in a thread now."""
    threads: list[str] = []
    decode = wire.decode_inputs

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(wire, "decode_inputs", recording)

    async def body(stub: restore_pb2_grpc.RestorerStub) -> str:
        loop_thread = threading.current_thread().name
        with pytest.raises(grpc.aio.AioRpcError):  # no Redis: validated, then UNAVAILABLE
            await stub.SubmitRestore(request(), timeout=10)
        return loop_thread

    loop_thread = run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert threads and loop_thread not in threads


def test_a_blind_denoise_too_small_to_estimate_sigma_is_refused_at_submit() -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> tuple[grpc.StatusCode, str]:
        tiny = restore_pb2.RestoreRequest(
            image=png(np.full((16, 1), 9, np.uint8)), denoise=restore_pb2.DenoiseParams()
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SubmitRestore(tiny, timeout=10)
        return info.value.code(), info.value.details() or ""

    code, details = run_gateway(body, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "got 1x16: give sigma" in details


def test_idempotency_keys_are_checked() -> None:
    for key in ("k" * 129, "tab\there", "é"):
        with pytest.raises(InvalidArgument, match="idempotency_key must be at most 128 printable ASCII"):
            job(request(idempotency_key=key))
    job(request(idempotency_key="k" * 128))


def test_a_retried_submit_with_the_same_key_gets_the_same_job(redis_url: str) -> None:
    async def body(stub: restore_pb2_grpc.RestorerStub) -> None:
        bus = JobBus.from_url(redis_url)
        await bus.redis.flushdb()
        try:
            keyed = request(idempotency_key="upload-7")
            alice = (("x-client-id", "alice"),)
            first = await stub.SubmitRestore(keyed, metadata=alice, timeout=10)
            again = await stub.SubmitRestore(keyed, metadata=alice, timeout=10)
            other = await stub.SubmitRestore(keyed, metadata=(("x-client-id", "bob"),), timeout=10)
            assert (
                first.queued.position == 1 and again.job_id == first.job_id and not again.HasField("queued")
            )
            assert other.job_id != first.job_id and await bus.queue_length() == 2
            # Restore with the key attaches to the job (and, owning it, cancels it when its deadline passes)
            call = stub.Restore(keyed, metadata=alice, timeout=2)
            assert dict(await asyncio.wait_for(call.initial_metadata(), 10))["x-job-id"] == first.job_id
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            await bus.close()

    run_gateway(body, redis_url=redis_url)


def test_a_job_whose_record_vanished_is_reported_lost(redis_url: str) -> None:
    """Issue #16: after a restart without persistence WatchRestore said "expired after its result TTL"."""

    async def body(stub: restore_pb2_grpc.RestorerStub) -> None:
        bus = JobBus.from_url(redis_url)
        try:
            job_id = (await stub.SubmitRestore(request(), timeout=10)).job_id
            await bus.redis.flushdb()
            for call in (
                lambda: stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=10).read(),
                lambda: stub.CancelRestore(restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=10),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call()
                assert info.value.code() == grpc.StatusCode.DATA_LOSS
                assert f"job {job_id} was lost: its record vanished" in (info.value.details() or "")
            unknown = new_job_id(time.time() - 7200)  # older than the TTL: may have expired
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.WatchRestore(restore_pb2.WatchRestoreRequest(job_id=unknown), timeout=10).read()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await bus.close()

    run_gateway(body, redis_url=redis_url)


def test_health_is_not_serving_while_redis_is_gone(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path, persistent=True)

    async def body(channel: grpc.aio.Channel) -> list[int]:
        health_stub = health_pb2_grpc.HealthStub(channel)
        bus = JobBus.from_url(server.url)
        ask = health_pb2.HealthCheckRequest(service=RESTORER_SERVICE)

        async def status_after(change: Callable[[], Awaitable[Any]]) -> int:
            await change()
            await asyncio.sleep(1.5)
            return int((await health_stub.Check(ask, timeout=5)).status)

        async def beat() -> None:
            await bus.beat("w")

        try:
            seen = [await status_after(beat)]
            seen.append(await status_after(lambda: asyncio.to_thread(server.handle.process.kill)))
            seen.append(await status_after(lambda: asyncio.to_thread(server.restart)))
            return seen
        finally:
            await bus.close()

    try:
        seen = run_on_channel(body, redis_url=server.url)
    finally:
        server.stop()
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert seen == [serving, not_serving, serving]  # the beat survived in the append-only file
