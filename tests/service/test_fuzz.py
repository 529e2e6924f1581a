"""Hypothesis over the request messages against a real gateway: every answer is OK or a documented status.

One gateway (port 0) for the module, with the fake inference backend of test_colorizer.py and a real
redis-server for the Restorer (no worker: jobs stay queued, which is all these calls need). Each case is
one call; its status must be OK or one of the codes the API documents for that RPC, never UNKNOWN or
INTERNAL, and its message must stay bounded whatever the request held (issue #16: a huge value echoed
into the status came back as RESOURCE_EXHAUSTED). Derandomized, so a failure reproduces.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.bus.jobs import new_job_id
from service.gateway.server import GatewayServer, create_server
from service.gateway.settings import Settings
from service.launch.redis import RedisServer
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc, restore_pb2, restore_pb2_grpc
from tests.service.gateway.test_colorizer import FakeBackend

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")

MAX_DETAILS = 600  # characters of a status message
C = grpc.StatusCode
# What the APIs document (colorize.proto, restore.proto, README): anything else is a bug.
COLORIZE_CODES = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.RESOURCE_EXHAUSTED,
    C.UNAVAILABLE,
    C.DEADLINE_EXCEEDED,
}
SUBMIT_CODES = {C.OK, C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE}
JOB_CODES = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.DATA_LOSS,
    C.UNAVAILABLE,
    C.CANCELLED,
    C.ABORTED,
    C.DEADLINE_EXCEEDED,
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def png(height: int, width: int, channels: int, seed: int) -> bytes:
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# Each field mostly takes values the API accepts (so whole requests get through to the pipeline and the
# bus) and sometimes anything at all.
good_images = st.builds(
    png, st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4]), st.integers(0, 3)
)
bad_images = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff\xe0" + b"\x00" * 20]),
)
images = st.one_of(good_images, good_images, good_images, bad_images)
any_name = st.one_of(
    st.text(max_size=40),
    st.text(min_size=5_000, max_size=20_000, alphabet="ab\u00e9\u2603"),
)
models = st.one_of(*[st.sampled_from(["", "eccv16", "siggraph17", "larsson16"])] * 3, any_name)
decodes = st.one_of(st.just(""), st.just(""), st.sampled_from(["expectation", "mode", "median"]), any_name)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3, 8, 16, 17, 64, 256, 1024, 1025]))
i32 = st.integers(-(2**31), 2**31 - 1) | st.integers(-2, 50)
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
hints: st.SearchStrategy[list[colorize_pb2.ColorHint]] = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(
        st.builds(
            colorize_pb2.ColorHint,
            x=i32,
            y=i32,
            color=st.none() | st.builds(colorize_pb2.Rgb, r=u32, g=u32, b=u32),
            patch_size=u32,
        ),
        max_size=4,
    ),
)


def colorize_requests() -> st.SearchStrategy[colorize_pb2.ColorizeRequest]:
    def build(**fields: Any) -> colorize_pb2.ColorizeRequest:
        if fields["temperature"] is None:
            del fields["temperature"]
        return colorize_pb2.ColorizeRequest(**fields)

    valid = st.builds(  # gets through to the pipeline: the fake backend, decode, encode
        build,
        image=good_images,
        model=st.sampled_from(["", "eccv16", "siggraph17", "larsson16"]),
        temperature=st.none(),
        working_size=st.sampled_from([0, 64, 72]),
        output_format=st.integers(0, 3),
        quality=st.integers(0, 100),
        hints=st.just([]),
        hue_decode=st.just(""),
        chroma_decode=st.just(""),
    )
    fuzzed = st.builds(
        build,
        image=images,
        model=models,
        temperature=st.none() | st.none() | st.floats(0.0625, 1.0, width=32) | floats32,
        working_size=st.sampled_from([0, 64, 64, 72, 100, 2048]) | u32,
        output_format=st.integers(0, 5),
        quality=st.sampled_from([0, 0, 1, 90, 100, 101]) | u32,
        hints=hints,
        hue_decode=decodes,
        chroma_decode=decodes,
    )
    return st.one_of(valid, fuzzed, fuzzed)


def suggest_requests() -> st.SearchStrategy[colorize_pb2.SuggestColorsRequest]:
    valid = st.builds(
        colorize_pb2.SuggestColorsRequest,
        image=good_images,
        x=st.integers(0, 0),
        y=st.integers(0, 0),
        k=st.integers(0, 16),
        working_size=st.sampled_from([0, 64]),
        seed=st.integers(0, 2**64 - 1),
    )
    fuzzed = st.builds(
        colorize_pb2.SuggestColorsRequest,
        image=images,
        x=st.integers(0, 8) | i32,
        y=st.integers(0, 8) | i32,
        hints=hints,
        k=st.sampled_from([0, 1, 16, 17]) | u32,
        working_size=st.sampled_from([0, 64, 64, 100]) | u32,
        seed=st.integers(0, 2**64 - 1),
    )
    return st.one_of(valid, fuzzed, fuzzed)


def restore_requests() -> st.SearchStrategy[restore_pb2.RestoreRequest]:
    tasks: st.SearchStrategy[dict[str, Any]] = st.one_of(
        st.builds(
            lambda s: {"denoise": restore_pb2.DenoiseParams(**({} if s is None else {"sigma": s}))},
            st.none() | floats32,
        ),
        st.builds(
            lambda mask, style, white: {
                "inpaint": restore_pb2.InpaintParams(mask=mask, style=style, mask_missing_white=white)
            },
            images,
            st.integers(0, 6),
            st.booleans(),
        ),
        st.builds(lambda f: {"super_resolve": restore_pb2.SuperResolveParams(factor=f)}, u32),
        st.just({"jpeg": restore_pb2.JpegParams()}),
        st.just({}),
    )
    stopping = st.one_of(
        st.just({}),
        st.builds(lambda n: {"fixed_iterations": n}, st.integers(1, 100) | u32),
        st.builds(lambda n: {"auto_stop": restore_pb2.AutoStopParams(max_iterations=n)}, u32),
    )
    keys = st.one_of(st.just(""), st.just(""), st.sampled_from(["retry-1", "retry-2"]), st.text(max_size=200))
    valid = st.builds(
        lambda image, n, key: restore_pb2.RestoreRequest(
            image=image, jpeg=restore_pb2.JpegParams(), fixed_iterations=n, idempotency_key=key
        ),
        good_images,
        st.integers(1, 100),
        st.sampled_from(["", "", "retry-1", "retry-2"]),
    )
    fuzzed = st.builds(
        lambda image, task, stop, **rest: restore_pb2.RestoreRequest(image=image, **task, **stop, **rest),
        images,
        tasks,
        stopping,
        seed=st.integers(0, 2**64 - 1),
        priority=i32,
        progress_every=u32,
        preview=st.booleans(),
        idempotency_key=keys,
    )
    return st.one_of(valid, fuzzed, fuzzed)


job_ids = st.one_of(
    st.text(max_size=40),
    st.text(min_size=1_000, max_size=10_000, alphabet="abc123"),
    st.builds(lambda dt: new_job_id(time.time() - dt), st.floats(0, 10_000)),  # ours, lost or expired
    st.sampled_from(["", "0" * 32, "t" + "0" * 32]),
)


class Gateway:
    """A gateway in its own event loop thread, so hypothesis's synchronous tests call it over gRPC."""

    def __init__(self, redis_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway")
        self.thread.start()
        config = Settings(
            port=0,
            health_poll_s=0.5,
            redis_url=redis_url,
            restore_max_queue=100_000,
            restore_max_jobs_per_client=100_000,
            restore_result_ttl_s=3600,
        )
        start = create_server(config, FakeBackend())
        self.server: GatewayServer = asyncio.run_coroutine_threadsafe(start, self.loop).result(30)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.colorizer = colorize_pb2_grpc.ColorizerStub(self.channel)
        self.restorer = restore_pb2_grpc.RestorerStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    redis = RedisServer.start(Path(tmp_path_factory.mktemp("redis")))
    running = None
    try:
        running = Gateway(redis.url)
        yield running
    finally:
        if running is not None:
            running.stop()
        redis.stop()


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        reply = call()
        if isinstance(reply, Iterator):
            for _ in reply:
                pass
        return C.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def check(code: grpc.StatusCode, details: str, allowed: set[grpc.StatusCode]) -> None:
    assert code in allowed, (code, details[:300])
    assert len(details) <= MAX_DETAILS, (code, len(details), details[:300])


@settings(FUZZ, max_examples=100)
@given(request=colorize_requests())
def test_colorize(gateway: Gateway, request: colorize_pb2.ColorizeRequest) -> None:
    check(*outcome(lambda: gateway.colorizer.Colorize(request, timeout=20)), COLORIZE_CODES)


@settings(FUZZ, max_examples=80)
@given(request=suggest_requests())
def test_suggest_colors(gateway: Gateway, request: colorize_pb2.SuggestColorsRequest) -> None:
    check(*outcome(lambda: gateway.colorizer.SuggestColors(request, timeout=20)), COLORIZE_CODES)


@settings(FUZZ, max_examples=120)
@given(request=restore_requests(), client=st.sampled_from(["a", "b"]))
def test_submit_restore(gateway: Gateway, request: restore_pb2.RestoreRequest, client: str) -> None:
    metadata = (("x-client-id", client),)
    code, details = outcome(lambda: gateway.restorer.SubmitRestore(request, metadata=metadata, timeout=20))
    check(code, details, SUBMIT_CODES)


@settings(FUZZ, max_examples=80)
@given(job_id=job_ids, cancel=st.booleans())
def test_watch_and_cancel(gateway: Gateway, job_id: str, cancel: bool) -> None:
    if cancel:
        call: Callable[[], Any] = lambda: gateway.restorer.CancelRestore(  # noqa: E731
            restore_pb2.CancelRestoreRequest(job_id=job_id), timeout=20
        )
    else:  # a real queued job would be followed until the deadline: DEADLINE_EXCEEDED, documented
        call = lambda: gateway.restorer.WatchRestore(  # noqa: E731
            restore_pb2.WatchRestoreRequest(job_id=job_id), timeout=2
        )
    check(*outcome(call), JOB_CODES)


METHODS = [
    ("/priorlab.v1.Colorizer/Colorize", COLORIZE_CODES, False),
    ("/priorlab.v1.Colorizer/SuggestColors", COLORIZE_CODES, False),
    ("/priorlab.v1.Restorer/SubmitRestore", SUBMIT_CODES, False),
    ("/priorlab.v1.Restorer/CancelRestore", JOB_CODES, False),
    ("/priorlab.v1.Restorer/WatchRestore", JOB_CODES, True),
]


@settings(FUZZ, max_examples=60)
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=300))
def test_arbitrary_bytes(
    gateway: Gateway, method: tuple[str, set[grpc.StatusCode], bool], data: bytes
) -> None:
    """Any bytes as a request: undecodable ones are INVALID_ARGUMENT (they were UNKNOWN)."""
    path, allowed, streaming = method
    if streaming:
        call: Any = gateway.channel.unary_stream(path)
        check(*outcome(lambda: call(data, timeout=2)), allowed)
    else:
        call = gateway.channel.unary_unary(path)
        check(*outcome(lambda: call(data, timeout=20)), allowed)


def test_a_huge_model_name_is_not_found_with_a_bounded_message(gateway: Gateway) -> None:
    request = colorize_pb2.ColorizeRequest(image=png(8, 8, 1, 0), model="m" * 20_000)
    code, details = outcome(lambda: gateway.colorizer.Colorize(request, timeout=20))
    assert code == C.NOT_FOUND and len(details) < 300 and "…(20000 chars)" in details


def test_an_undecodable_colorize_request_is_invalid_argument(gateway: Gateway) -> None:
    call = gateway.channel.unary_unary("/priorlab.v1.Colorizer/Colorize")
    code, details = outcome(lambda: call(b"\x0a\xff\xff\xff\xff\x0f", timeout=20))  # a length past the end
    assert code == C.INVALID_ARGUMENT and "not a valid protobuf message" in details
