"""Restorer gateway logic without workers: validation, client ids, failure mapping, UNAVAILABLE.

Where a worker is needed, the test plays it on the bus (claim, start, finish): no torch.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from contract import ModelSpec
from service.bus.jobs import JobBus, failure_event
from service.errors import (
    STATUS_CODES,
    Aborted,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    PriorlabError,
)
from service.gateway.restorer import build_job, client_id, public_event
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
        assert built.request == req and built.client_id == "alice" and len(built.job_id) == 32
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
    async def main() -> Any:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05, **settings), NoTriton())  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                return await body(restore_pb2_grpc.RestorerStub(channel))
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
                await worker
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
