"""Gateway logic against an in-memory backend: validation, error mapping, deadlines, recombination."""

from __future__ import annotations

import asyncio
import colorsys
import io
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import color

from contract import ECCV16, ModelSpec, asset_path
from service.errors import DeadlineExceeded, PriorlabError, ResourceExhausted, Unavailable
from service.gateway import colorize as colorize_module
from service.gateway.colorize import work_name
from service.gateway.server import create_server
from service.gateway.settings import Settings
from service.gateway.triton import ModelInfo
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc

TARGET_AB = (30, -40)  # a bin centre of the 10-unit grid, in gamut for mid L
HUE_BIN = 21  # larsson16 fake: hue (21 + 0.5) / 32, a blue
CHROMA_BINS = (4, 12)  # 0.6 / 0.4 of the chroma mass: the median is bin 4, the q75 bin 12


@dataclass
class FakeBackend:
    """Predicts one ab bin everywhere; records what it was asked; can be told to fail."""

    error: PriorlabError | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    is_ready: bool = True
    suggest_soften: float = 0.2  # the served checkpoint's SuggestColors softening (its config)

    async def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], *, timeout_s: float
    ) -> dict[str, np.ndarray]:
        self.calls.append({"inputs": inputs, "timeout_s": timeout_s})
        if self.error is not None:
            raise self.error
        n, _, h, w = inputs["L"].shape
        if spec.name == "larsson16":  # hue bin HUE_BIN everywhere; chroma split between two bins
            hue = np.zeros((n, 32, h // 4, w // 4), np.float16)
            hue[:, HUE_BIN] = 1.0
            chroma = np.zeros_like(hue)
            chroma[:, CHROMA_BINS[0]], chroma[:, CHROMA_BINS[1]] = 0.6, 0.4
            return {"hue": hue, "chroma": chroma}
        if "hint_mask" in inputs:  # SIGGRAPH17: hinted colour where the mask is set, else TARGET_AB
            mask = inputs["hint_mask"]
            ab = np.where(mask > 0, inputs["ab_hint"], np.array(TARGET_AB, np.float32)[None, :, None, None])
            grid = np.zeros((n, 529, h // 4, w // 4), np.float16)
            grid[:, 23 * (40 + 110) // 10 + (-20 + 110) // 10] = 50.0
            return {"ab": ab.astype(np.float16), "logits": grid}
        bins = np.load(asset_path("pts_in_hull.npy"))
        target = int(np.flatnonzero((bins == TARGET_AB).all(axis=1))[0])
        logits = np.zeros((n, 313, h // 4, w // 4), np.float16)
        logits[:, target] = 30.0
        return {"logits": logits}

    async def model_info(self, spec: ModelSpec) -> ModelInfo:
        return ModelInfo(spec.name, "1", "fake-checkpoint", trained=False, suggest_soften=self.suggest_soften)

    async def ready(self, spec: ModelSpec) -> bool:
        return self.is_ready

    async def close(self) -> None:
        pass


def run_gateway(
    backend: FakeBackend, body: Callable[[grpc.aio.Channel], Awaitable[Any]], **settings: Any
) -> Any:
    async def main() -> Any:
        gateway = await create_server(Settings(port=0, health_poll_s=0.05, **settings), backend)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                return await body(channel)
        finally:
            await gateway.stop(0)

    return asyncio.run(main())


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def gray_gradient(height: int = 60, width: int = 90) -> np.ndarray:
    row = np.linspace(80, 200, width).astype(np.uint8)
    return np.repeat(row[None, :], height, axis=0)


def colorize(backend: FakeBackend, request: colorize_pb2.ColorizeRequest, timeout: float | None = 10) -> Any:
    async def body(channel: grpc.aio.Channel) -> Any:
        return await colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=timeout)

    return run_gateway(backend, body)


def test_output_keeps_size_and_l_and_takes_the_predicted_ab() -> None:
    gray = gray_gradient()
    response = colorize(FakeBackend(), colorize_pb2.ColorizeRequest(image=png(gray)))
    out = np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB"))
    assert out.shape == (60, 90, 3) and (response.width, response.height) == (90, 60)
    lab_in = color.rgb2lab(np.repeat(gray[..., None], 3, axis=2))
    lab_out = color.rgb2lab(out)
    assert np.abs(lab_out[..., 0] - lab_in[..., 0]).max() <= 1.0
    np.testing.assert_allclose(np.median(lab_out[..., 1:], axis=(0, 1)), TARGET_AB, atol=2.0)
    assert response.checkpoint == "fake-checkpoint" and not response.trained
    assert response.model == "eccv16" and response.model_version == "1"
    assert response.temperature == pytest.approx(0.38) and response.working_size == 256


@pytest.mark.parametrize("model", ["larsson16", "siggraph17"])
def test_a_model_without_an_annealed_mean_reports_no_temperature(model: str) -> None:
    response = colorize(FakeBackend(), colorize_pb2.ColorizeRequest(image=png(gray_gradient()), model=model))
    assert response.model == model and not response.HasField("temperature")


def test_working_size_and_l_range_reach_the_backend() -> None:
    backend = FakeBackend()
    colorize(backend, colorize_pb2.ColorizeRequest(image=png(gray_gradient()), working_size=128))
    (call,) = backend.calls
    lightness = call["inputs"]["L"]
    assert lightness.shape == (1, 1, 128, 128) and lightness.dtype == np.float32
    assert 30 < lightness.min() < lightness.max() < 85


def test_alpha_is_preserved() -> None:
    rgba = np.dstack([gray_gradient()] * 3 + [np.tile(np.arange(90, dtype=np.uint8), (60, 1))])
    response = colorize(FakeBackend(), colorize_pb2.ColorizeRequest(image=png(rgba)))
    out = np.asarray(Image.open(io.BytesIO(response.image)))
    assert out.shape == (60, 90, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])


@pytest.mark.parametrize(
    ("request_kwargs", "code", "needle"),
    [
        ({"image": b"not an image"}, grpc.StatusCode.INVALID_ARGUMENT, "image"),
        ({"image": b""}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ({"temperature": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "1.5"),
        ({"temperature": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        ({"working_size": 100}, grpc.StatusCode.INVALID_ARGUMENT, "100"),
        ({"working_size": 2048}, grpc.StatusCode.INVALID_ARGUMENT, "2048"),
        ({"quality": 101}, grpc.StatusCode.INVALID_ARGUMENT, "101"),
        ({"model": "dalle"}, grpc.StatusCode.NOT_FOUND, "dalle"),
        ({"model": "larsson16", "temperature": 0.5}, grpc.StatusCode.INVALID_ARGUMENT, "larsson16"),
        ({"model": "siggraph17", "temperature": 0.5}, grpc.StatusCode.INVALID_ARGUMENT, "0.5"),
    ],
)
def test_bad_requests_name_the_offending_value(
    request_kwargs: dict[str, Any], code: grpc.StatusCode, needle: str
) -> None:
    request = colorize_pb2.ColorizeRequest(**{"image": png(gray_gradient()), **request_kwargs})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        colorize(FakeBackend(), request)
    assert info.value.code() == code
    assert needle in (info.value.details() or "")


def test_too_many_pixels_is_invalid_argument_with_the_limit() -> None:
    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient(60, 90)))

    async def body(channel: grpc.aio.Channel) -> Any:
        return await colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        run_gateway(FakeBackend(), body, max_pixels=1000)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5400" in (info.value.details() or "") and "1000" in (info.value.details() or "")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unavailable("Triton is down"), grpc.StatusCode.UNAVAILABLE),
        (ResourceExhausted("queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_backend_errors_map_to_status_codes(error: PriorlabError, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        colorize(FakeBackend(error=error), colorize_pb2.ColorizeRequest(image=png(gray_gradient())))
    assert info.value.code() == code
    assert str(error) in (info.value.details() or "")


@pytest.mark.parametrize("deadline", [20.0, 300.0])
def test_client_deadline_is_propagated_to_triton_uncapped(deadline: float) -> None:
    backend = FakeBackend()
    colorize(backend, colorize_pb2.ColorizeRequest(image=png(gray_gradient())), timeout=deadline)
    (call,) = backend.calls
    # gRPC core's grpc-timeout encoding "may round up" (timeout_encoding.h): the server saw 20.097 s for
    # 20 s once. So allow a little over what the client set. A 300 s deadline is kept, not cut to the
    # 30 s default: huge images that queue for the pixel budget failed at 30 s with 900 s deadlines.
    assert deadline - 5 < call["timeout_s"] <= deadline * 1.0125


def test_no_client_deadline_means_the_default() -> None:
    backend = FakeBackend()
    colorize(backend, colorize_pb2.ColorizeRequest(image=png(gray_gradient())), timeout=None)
    (call,) = backend.calls
    assert 29.0 < call["timeout_s"] <= Settings().triton_timeout_s == 30.0  # less the time it took to decode


def test_health_follows_backend_readiness() -> None:
    backend = FakeBackend(is_ready=False)

    async def body(channel: grpc.aio.Channel) -> list[int]:
        stub = health_pb2_grpc.HealthStub(channel)
        service = "priorlab.v1.Colorizer"
        statuses = []
        await asyncio.sleep(0.2)
        statuses.append((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)
        backend.is_ready = True
        await asyncio.sleep(0.2)
        statuses.append((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)
        return statuses

    assert run_gateway(backend, body) == [
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]


def test_health_is_not_serving_before_the_first_readiness_check_answers() -> None:
    # A client that asks right after start-up (a load balancer, `make run`'s own tests) must hear
    # NOT_SERVING for a service this gateway serves, never NOT_FOUND, which means "no such service".
    backend = FakeBackend()
    answered = asyncio.Event()

    async def slow_ready(spec: ModelSpec) -> bool:
        await answered.wait()
        return True

    backend.ready = slow_ready  # type: ignore[method-assign]

    async def body(channel: grpc.aio.Channel) -> list[int]:
        stub = health_pb2_grpc.HealthStub(channel)
        statuses = []
        for service in ("priorlab.v1.Colorizer", ""):
            statuses.append((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)
        answered.set()
        await asyncio.sleep(0.2)
        request = health_pb2.HealthCheckRequest(service="priorlab.v1.Colorizer")
        statuses.append((await stub.Check(request)).status)
        return statuses

    not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    assert run_gateway(backend, body) == [not_serving, not_serving, serving]


def test_jpeg_and_webp_outputs() -> None:
    for fmt, magic in (
        (colorize_pb2.IMAGE_FORMAT_JPEG, b"\xff\xd8"),
        (colorize_pb2.IMAGE_FORMAT_WEBP, b"RIFF"),
    ):
        response = colorize(
            FakeBackend(),
            colorize_pb2.ColorizeRequest(image=png(gray_gradient()), output_format=fmt, quality=80),
        )
        assert response.image.startswith(magic) and response.format == fmt


def test_unexpected_errors_become_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FakeBackend()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(backend, "infer", broken)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        colorize(backend, colorize_pb2.ColorizeRequest(image=png(gray_gradient())))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (info.value.details() or "")


def test_contract_spec_is_what_the_fake_serves() -> None:
    assert ECCV16.output("logits").shape(1, 256, 256) == (1, 313, 64, 64)


def test_hints_select_siggraph17_and_their_colour_lands_at_their_location() -> None:
    backend = FakeBackend()
    gray = gray_gradient(64, 64)
    hint = colorize_pb2.ColorHint(x=40, y=20, color=colorize_pb2.Rgb(r=30, g=160, b=60), patch_size=9)
    response = colorize(backend, colorize_pb2.ColorizeRequest(image=png(gray), hints=[hint], working_size=64))
    assert response.model == "siggraph17"
    (call,) = backend.calls
    assert call["inputs"]["hint_mask"].sum() == 81
    out = color.rgb2lab(np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB")))
    hinted = color.rgb2lab(np.array([[[30, 160, 60]]], np.uint8))[0, 0, 1:]
    np.testing.assert_allclose(out[20, 40, 1:], hinted, atol=3.0)
    np.testing.assert_allclose(out[60, 5, 1:], TARGET_AB, atol=3.0)


def _colorize_with_settings(
    backend: FakeBackend, request: colorize_pb2.ColorizeRequest, **settings: Any
) -> Any:
    async def body(channel: grpc.aio.Channel) -> Any:
        return await colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)

    return run_gateway(backend, body, **settings)


@pytest.mark.parametrize(
    ("inline_pixels", "image_format", "output_format", "hinted", "on_the_loop"),
    [
        (60 * 90, "JPEG", "", False, True),
        (60 * 90, "JPEG", "png", False, True),
        (60 * 90 - 1, "JPEG", "", False, False),  # one pixel over the bound
        (60 * 90, "JPEG", "", True, False),  # hints to spread
        (60 * 90, "PNG", "", False, False),  # a PNG decodes in several ms
        (60 * 90, "JPEG", "WEBP", False, False),  # a WebP encodes in ~20 ms
    ],
)
def test_small_jpegs_are_worked_on_the_loop_the_rest_in_threads(
    monkeypatch: pytest.MonkeyPatch,
    inline_pixels: int,
    image_format: str,
    output_format: str,
    hinted: bool,
    on_the_loop: bool,
) -> None:
    """A small JPEG answered as JPEG or PNG costs less colour work than two thread hops, so it runs on
    the event loop; a larger image, one with hints to spread, a PNG to decode or a WebP to encode, in
    a worker thread so the loop keeps serving."""
    threads: dict[str, int] = {}
    for name in ("prepare", "postprocess"):
        work = getattr(colorize_module, name)

        def spy(*args: Any, _work: Any = work, _name: str = name, **kwargs: Any) -> Any:
            threads[_name] = threading.get_ident()
            return _work(*args, **kwargs)

        monkeypatch.setattr(colorize_module, name, spy)
    hints = [colorize_pb2.ColorHint(x=10, y=10, color=colorize_pb2.Rgb(r=200, g=40, b=40))] if hinted else []
    buffer = io.BytesIO()
    Image.fromarray(gray_gradient()).save(buffer, format=image_format)
    wanted = colorize_pb2.ImageFormat.Value(f"IMAGE_FORMAT_{output_format.upper() or 'UNSPECIFIED'}")
    request = colorize_pb2.ColorizeRequest(image=buffer.getvalue(), hints=hints, output_format=wanted)

    async def body(channel: grpc.aio.Channel) -> int:
        reply = await colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)
        expected = (output_format or image_format).upper()
        assert Image.open(io.BytesIO(reply.image)).format == expected
        return threading.get_ident()  # the test's event loop is the gateway's

    loop_thread = run_gateway(FakeBackend(), body, inline_pixels=inline_pixels)
    assert set(threads) == {"prepare", "postprocess"}
    assert all((ident == loop_thread) == on_the_loop for ident in threads.values()), threads


@dataclass
class HoldingBackend(FakeBackend):
    """Holds the first call inside Triton until `release` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], *, timeout_s: float
    ) -> dict[str, np.ndarray]:
        if not self.calls:
            self.calls.append({})  # marks the first call as inside Triton
            await self.release.wait()
            return await super().infer(spec, inputs, timeout_s=timeout_s)
        return await super().infer(spec, inputs, timeout_s=timeout_s)


def test_a_call_beside_another_in_flight_is_worked_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the loop stays free to answer and refuse others: a small JPEG that would run on the
    loop alone goes to worker threads while another call is in flight, and the first call, alone
    again when its answer comes back, encodes on the loop."""
    stages: list[tuple[str, bool]] = []
    loop_thread: list[int] = []
    for name in ("prepare", "postprocess"):
        work = getattr(colorize_module, name)

        def spy(*args: Any, _work: Any = work, _name: str = name, **kwargs: Any) -> Any:
            stages.append((_name, threading.get_ident() == loop_thread[0]))
            return _work(*args, **kwargs)

        monkeypatch.setattr(colorize_module, name, spy)
    buffer = io.BytesIO()
    Image.fromarray(gray_gradient()).save(buffer, format="JPEG")
    request = colorize_pb2.ColorizeRequest(image=buffer.getvalue())
    backend = HoldingBackend()

    async def body(channel: grpc.aio.Channel) -> None:
        loop_thread.append(threading.get_ident())  # the test's event loop is the gateway's
        stub = colorize_pb2_grpc.ColorizerStub(channel)
        first = asyncio.ensure_future(stub.Colorize(request, timeout=10))
        while not backend.calls:  # the first call is inside Triton
            await asyncio.sleep(0.01)
        await stub.Colorize(request, timeout=10)  # the second, beside it
        backend.release.set()
        await first

    run_gateway(backend, body)
    assert stages == [
        ("prepare", True),  # the first call, alone
        ("prepare", False),  # the second, beside the first
        ("postprocess", False),
        ("postprocess", True),  # the first, alone again
    ]


@pytest.mark.parametrize("spread", [True, False])
def test_hints_are_spread_along_the_photo_unless_turned_off(spread: bool) -> None:
    # The fake network colours only the hinted pixels; the gateway carries the hint's colour on
    # along the (smooth) photo, within a quarter of the working size, when PRIORLAB_HINT_SPREAD is on.
    backend = FakeBackend()
    hint = colorize_pb2.ColorHint(x=32, y=32, color=colorize_pb2.Rgb(r=30, g=160, b=60), patch_size=3)
    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient(64, 64)), hints=[hint], working_size=64)
    response = _colorize_with_settings(backend, request, hint_spread=spread)
    out = color.rgb2lab(np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB")))
    hinted = color.rgb2lab(np.array([[[30, 160, 60]]], np.uint8))[0, 0, 1:]
    near = out[32, 38, 1:]  # 5 px beside the patch
    to_hint, to_network = np.hypot(*(near - hinted)), np.hypot(*(near - np.array(TARGET_AB)))
    if spread:
        assert to_hint < 0.5 * to_network, (near, hinted)
    else:
        np.testing.assert_allclose(near, TARGET_AB, atol=3.0)
    np.testing.assert_allclose(out[2, 2, 1:], TARGET_AB, atol=3.0)  # 42 px away: beyond 16 = 64 / 4


@pytest.mark.parametrize(
    ("request_kwargs", "needle"),
    [
        (
            {"hints": [colorize_pb2.ColorHint(x=90, y=0, color=colorize_pb2.Rgb(r=1))]},
            "hint 0 at (x=90, y=0)",
        ),
        ({"hints": [colorize_pb2.ColorHint(x=1, y=1)]}, "hint 0 at (x=1, y=1) has no color"),
        ({"hints": [colorize_pb2.ColorHint(x=1, y=1, color=colorize_pb2.Rgb(g=300))]}, "(0, 300, 0)"),
        (
            {"hints": [colorize_pb2.ColorHint(x=1, y=1, color=colorize_pb2.Rgb())], "model": "eccv16"},
            "eccv16",
        ),
    ],
)
def test_bad_hints_are_invalid_argument(request_kwargs: dict[str, Any], needle: str) -> None:
    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient()), **request_kwargs)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        colorize(FakeBackend(), request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


def suggest_colors(backend: FakeBackend, request: colorize_pb2.SuggestColorsRequest) -> Any:
    async def body(channel: grpc.aio.Channel) -> Any:
        return await colorize_pb2_grpc.ColorizerStub(channel).SuggestColors(request, timeout=10)

    return run_gateway(backend, body)


def test_suggest_colors_returns_the_distributions_mode_at_the_pixels_lightness() -> None:
    gray = gray_gradient(64, 96)
    response = suggest_colors(
        FakeBackend(), colorize_pb2.SuggestColorsRequest(image=png(gray), x=10, y=30, seed=3)
    )
    assert response.model == "siggraph17" and response.checkpoint == "fake-checkpoint"
    top = response.colors[0]
    # Logit 50 against 0 softens to ~98% on the bin: the top cluster sits on it.
    assert top.a == pytest.approx(40.0, abs=0.5) and top.b == pytest.approx(-20.0, abs=0.5)
    assert top.confidence > 0.9
    lightness = color.rgb2lab(np.repeat(gray[..., None], 3, axis=2))[30, 10, 0]
    expected = np.round(255 * color.lab2rgb(np.array([[[lightness, top.a, top.b]]]))[0, 0]).astype(int)
    np.testing.assert_allclose([top.color.r, top.color.g, top.color.b], expected, atol=1)


@pytest.mark.parametrize(
    ("request_kwargs", "needle"),
    [({"x": 96, "y": 0}, "point (x=96, y=0)"), ({"k": 17}, "17"), ({"working_size": 12}, "12")],
)
def test_bad_suggest_requests_are_invalid_argument(request_kwargs: dict[str, Any], needle: str) -> None:
    request = colorize_pb2.SuggestColorsRequest(image=png(gray_gradient(64, 96)), **request_kwargs)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        suggest_colors(FakeBackend(), request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


@pytest.mark.parametrize(("chroma_decode", "chroma_bin"), [("", CHROMA_BINS[0]), ("q75", CHROMA_BINS[1])])
def test_larsson16_distributions_are_decoded_with_the_requested_rule(
    chroma_decode: str, chroma_bin: int
) -> None:
    gray = np.full((40, 56), 120, np.uint8)
    request = colorize_pb2.ColorizeRequest(
        image=png(gray), model="larsson16", working_size=64, chroma_decode=chroma_decode
    )
    response = colorize(FakeBackend(), request)
    assert response.model == "larsson16"
    out = color.rgb2lab(np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB")))
    # The rules by hand: one hue bin (no fading), chroma at the chosen bin's centre, the pixel's gray.
    level = 120 / 255
    c = (chroma_bin + 0.5) / 32
    rgb = colorsys.hsv_to_rgb((HUE_BIN + 0.5) / 32, 2 * c / (2 * level + c), level + c / 2)
    rgb = np.clip(np.array(rgb) - np.mean(rgb) + level, 0, 1)
    np.testing.assert_allclose(
        np.median(out[..., 1:], axis=(0, 1)), color.rgb2lab(rgb[None, None])[0, 0, 1:], atol=2
    )
    assert np.abs(out[..., 0] - color.rgb2lab(np.dstack([gray] * 3))[..., 0]).max() <= 1.0


@pytest.mark.parametrize(
    ("request_kwargs", "needle"),
    [
        ({"model": "larsson16", "hue_decode": "sampled"}, "sampled"),
        ({"model": "larsson16", "chroma_decode": "q90"}, "q90"),
        ({"model": "eccv16", "hue_decode": "mode"}, "larsson16"),
    ],
)
def test_bad_decode_modes_are_invalid_argument(request_kwargs: dict[str, Any], needle: str) -> None:
    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient()), **request_kwargs)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        colorize(FakeBackend(), request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


def test_unspecified_output_format_follows_the_input() -> None:
    buffer = io.BytesIO()
    Image.fromarray(gray_gradient()).save(buffer, format="JPEG")
    jpeg_in = colorize(FakeBackend(), colorize_pb2.ColorizeRequest(image=buffer.getvalue()))
    assert jpeg_in.format == colorize_pb2.IMAGE_FORMAT_JPEG and jpeg_in.image.startswith(b"\xff\xd8")
    buffer = io.BytesIO()
    Image.fromarray(gray_gradient()).save(buffer, format="BMP")
    bmp_in = colorize(FakeBackend(), colorize_pb2.ColorizeRequest(image=buffer.getvalue()))
    assert bmp_in.format == colorize_pb2.IMAGE_FORMAT_PNG and bmp_in.image.startswith(b"\x89PNG")


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_as_v1_and_v1alpha(version: str) -> None:
    # A v1 client sends the v1alpha messages' bytes (the v1 protocol renamed the package only).
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    async def body(channel: grpc.aio.Channel) -> Any:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="priorlab.v1.Colorizer"),
        ]
        return [response async for response in call(iter(requests), timeout=5)]

    listed, found = run_gateway(FakeBackend(), body)
    names = {s.name for s in listed.list_services_response.service}
    assert {"priorlab.v1.Colorizer", "grpc.reflection.v1.ServerReflection"} <= names
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        found.file_descriptor_response.file_descriptor_proto[0]
    )
    assert proto.name == "priorlab/v1/colorize.proto"


@dataclass
class SerialBackend(FakeBackend):
    """One request at a time, each taking `delay_s` (like one Triton instance); counts the overlap."""

    delay_s: float = 0.0
    running: int = 0
    max_running: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def infer(
        self, spec: ModelSpec, inputs: dict[str, np.ndarray], *, timeout_s: float
    ) -> dict[str, np.ndarray]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            async with self.lock:
                await asyncio.sleep(self.delay_s)
                return await super().infer(spec, inputs, timeout_s=timeout_s)
        finally:
            self.running -= 1


async def _gathered(channel: grpc.aio.Channel, n: int, timeout: float, image: bytes) -> list[str]:
    stub = colorize_pb2_grpc.ColorizerStub(channel)

    async def one() -> str:
        try:
            await stub.Colorize(colorize_pb2.ColorizeRequest(image=image), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        return "OK"

    return list(await asyncio.gather(*(one() for _ in range(n))))


def test_a_full_queue_is_resource_exhausted_at_once_with_retry_after() -> None:
    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient()))

    async def body(channel: grpc.aio.Channel) -> Any:
        call = colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)
        start = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        return info.value, asyncio.get_running_loop().time() - start

    error, seconds = run_gateway(FakeBackend(), body, max_queued_colorize=0)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (error.details() or "")
    assert int(dict(error.trailing_metadata())["retry-after"]) >= 1
    assert seconds < 1.0


def test_huge_images_wait_for_the_pixel_budget_instead_of_decoding_together() -> None:
    image = png(gray_gradient(60, 90))  # 5,400 pixels

    def overlap(budget: int) -> tuple[list[str], int]:
        backend = SerialBackend(delay_s=0.05)
        codes = run_gateway(backend, lambda ch: _gathered(ch, 3, 10.0, image), max_pixels_in_flight=budget)
        return codes, backend.max_running

    assert overlap(6_000) == (["OK"] * 3, 1)  # one image's pixels at a time
    codes, running = overlap(100_000)
    assert codes == ["OK"] * 3 and running == 3  # all three fit


def test_calls_whose_deadline_the_backlog_cannot_meet_are_shed_not_timed_out() -> None:
    image = png(gray_gradient())
    backend = SerialBackend(delay_s=0.25)

    async def body(channel: grpc.aio.Channel) -> list[str]:
        await _gathered(channel, 1, 10.0, image)  # measures the service time: 0.25 s
        return await _gathered(channel, 12, 2.0, image)  # 3 s of work for 2 s deadlines

    codes = run_gateway(backend, body)
    assert "DEADLINE_EXCEEDED" not in codes
    assert 4 <= codes.count("OK") <= 8 and codes.count("RESOURCE_EXHAUSTED") == 12 - codes.count("OK")


def test_retry_after_is_the_one_the_refusal_computed() -> None:
    from service.gateway.admission import Overloaded

    request = colorize_pb2.ColorizeRequest(image=png(gray_gradient()))

    async def body(channel: grpc.aio.Channel) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=10)
        return info.value

    error = run_gateway(FakeBackend(error=Overloaded("the backlog is 9 s", 7)), body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())["retry-after"] == "7"


def test_suggest_colors_softens_by_the_served_checkpoints_factor() -> None:
    # Logit 50 against 0: x0.2 leaves ~98 % on the bin; x0.01 (softmax of 0.5 vs 0) is nearly uniform.
    request = colorize_pb2.SuggestColorsRequest(image=png(gray_gradient(64, 96)), x=10, y=30, seed=3)
    peaked = suggest_colors(FakeBackend(suggest_soften=0.2), request).colors[0].confidence
    flat = suggest_colors(FakeBackend(suggest_soften=0.01), request).colors[0].confidence
    assert peaked > 0.9 and flat < 0.5


def test_hinted_colorize_calls_are_timed_apart_by_their_count() -> None:
    assert work_name("siggraph17", 0, spread=True) == "siggraph17"
    assert work_name("siggraph17", 500, spread=False) == "siggraph17"  # no spread: hints cost nothing
    names = {n: work_name("siggraph17", n, spread=True) for n in (1, 3, 4, 15, 16, 63, 64, 1024)}
    assert names[1] == names[3] == "siggraph17:hints<4"
    assert names[4] == names[15] == "siggraph17:hints<16"
    assert names[16] == names[63] == "siggraph17:hints<64"
    assert names[64] == "siggraph17:hints<256" and names[1024] == "siggraph17:hints<4096"
