"""Colorize end to end: real tritonserver + real gateway process, the make-run stack."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from skimage import color
from torch.nn import functional as F

from contract import ECCV16, asset_path
from service.gateway.triton import TritonBackend
from service.launch.process import free_port
from service.launch.triton import TritonServer
from service.pb.priorlab.v1 import colorize_pb2, colorize_pb2_grpc
from tests.conftest import MODEL_REPOSITORY
from tests.integration.conftest import GatewayProcess

pytestmark = pytest.mark.triton

# A colour landscape (sky, rock, autumn larches, grass), 900 x 599: see samples/README.md.
PHOTO = "aitzgorri.jpg"
PHOTO_SIZE = (900, 599)
# The authors' test photo and their ECCV16 output are not redistributable: the golden comparison reads
# them from a folder the user supplies.
GOLDEN_DIR = Path(os.environ.get("PRIORLAB_GOLDEN_DIR") or "/nonexistent")
GOLDEN_FILES = ("ansel_adams3.jpg", "saved_eccv16.png")


def call(
    gateway: GatewayProcess, request: colorize_pb2.ColorizeRequest, timeout: float = 60
) -> colorize_pb2.ColorizeResponse:
    """Colorize; PNG out unless the test asks otherwise, so pixels can be compared exactly."""
    if request.output_format == colorize_pb2.IMAGE_FORMAT_UNSPECIFIED:
        request.output_format = colorize_pb2.IMAGE_FORMAT_PNG
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(gateway.target, options=options) as channel:
        return colorize_pb2_grpc.ColorizerStub(channel).Colorize(request, timeout=timeout)


def reference_ab(rgb: np.ndarray, temperature: float, size: int = 256) -> np.ndarray:
    """Independent oracle: skimage L, PIL bicubic resize, ORT on the served ONNX, float64 decode."""
    lightness = color.rgb2lab(rgb)[..., 0].astype(np.float32)
    working = np.asarray(Image.fromarray(lightness, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    session = ort.InferenceSession(
        str(MODEL_REPOSITORY / "eccv16" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(None, {"L": working[None, None].astype(np.float32)})
    z = logits.astype(np.float64)[0]
    z = np.exp(z - z.max(axis=0))
    z /= z.sum(axis=0)
    annealed = np.exp(np.log(z) / temperature)
    annealed /= annealed.sum(axis=0)
    ab = np.einsum("qhw,qc->chw", annealed, np.load(asset_path("pts_in_hull.npy")).astype(np.float64))
    full = F.interpolate(torch.from_numpy(ab)[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return full[0].numpy().transpose(1, 2, 0)


def assert_served_ab(
    response: colorize_pb2.ColorizeResponse, source: np.ndarray, temperature: float, size: int = 256
) -> None:
    """L is the input's and ab the served model's wherever the predicted colour is in gamut."""
    out = np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB"))
    assert out.shape == source.shape
    lab_in, lab_out = color.rgb2lab(source), color.rgb2lab(out)
    expected = reference_ab(source, temperature, size)
    # Out of gamut, Lab -> sRGB clamps and both L and ab move; inside, only uint8 rounding does.
    rgb_expected = color.lab2rgb(np.dstack([lab_in[..., 0], expected]))
    inside = np.all((rgb_expected > 0.01) & (rgb_expected < 0.99), axis=2)
    assert inside.mean() > 0.5
    assert np.abs(lab_out[..., 0] - lab_in[..., 0])[inside].max() <= 1.0
    ab_error = np.abs(lab_out[..., 1:] - expected)[inside]
    assert np.median(ab_error) <= 0.5 and np.quantile(ab_error, 0.99) <= 2.5


def test_a_photo_keeps_size_and_l_and_has_the_served_models_ab(
    gateway: GatewayProcess, samples: Path
) -> None:
    data = (samples / PHOTO).read_bytes()
    response = call(gateway, colorize_pb2.ColorizeRequest(image=data))
    source = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert source.shape == (*PHOTO_SIZE[::-1], 3) and (response.width, response.height) == PHOTO_SIZE
    # No T asked: the served checkpoint's default, reported back.
    assert_served_ab(response, source, response.temperature)
    assert response.model == "eccv16" and response.model_version == "1"
    assert (
        response.checkpoint
        and response.timings.triton_ms > 0
        and response.timings.total_ms >= response.timings.triton_ms
    )


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_temperature_is_applied(gateway: GatewayProcess, samples: Path, temperature: float) -> None:
    data = (samples / PHOTO).read_bytes()
    response = call(
        gateway, colorize_pb2.ColorizeRequest(image=data, temperature=temperature, working_size=128)
    )
    assert response.temperature == pytest.approx(temperature)
    source = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    # The two temperatures predict visibly different ab, so matching each one's oracle is a real check.
    assert np.abs(reference_ab(source, 0.1, 128) - reference_ab(source, 1.0, 128)).mean() > 1.0
    assert_served_ab(response, source, temperature, 128)


def test_decode_in_triton_gives_the_same_image(
    gateway: GatewayProcess,
    triton_server: TritonServer,
    gateway_factory: Callable[..., GatewayProcess],
    samples: Path,
) -> None:
    remote_style = gateway_factory(triton_server.grpc_url, shared_memory=False, decode_in_triton=True)
    data = (samples / PHOTO).read_bytes()
    request = colorize_pb2.ColorizeRequest(image=data, temperature=0.2, working_size=128)
    in_gateway = np.asarray(Image.open(io.BytesIO(call(gateway, request).image))).astype(int)
    in_graph = np.asarray(Image.open(io.BytesIO(call(remote_style, request).image))).astype(int)
    # FP16 ab from the graph vs FP16 logits decoded in float32: at most a level or two apart.
    difference = np.abs(in_gateway - in_graph)
    assert difference.max() <= 3 and difference.mean() < 0.5


def test_a_jpeg_comes_back_as_jpeg_unless_asked_otherwise(gateway: GatewayProcess, samples: Path) -> None:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    data = (samples / PHOTO).read_bytes()
    with grpc.insecure_channel(gateway.target, options=options) as channel:
        response = colorize_pb2_grpc.ColorizerStub(channel).Colorize(
            colorize_pb2.ColorizeRequest(image=data, working_size=128), timeout=60
        )
    assert response.format == colorize_pb2.IMAGE_FORMAT_JPEG and response.image.startswith(b"\xff\xd8")


def test_health_and_reflection(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="priorlab.v1.Colorizer"), timeout=5)
            .status
        )
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert {"priorlab.v1.Colorizer", "grpc.health.v1.Health"} <= services


def test_bad_image_is_invalid_argument_and_the_server_keeps_serving(
    gateway: GatewayProcess, samples: Path
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(gateway, colorize_pb2.ColorizeRequest(image=b"\x89PNG\r\n\x1a\n garbage"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    data = (samples / PHOTO).read_bytes()
    assert call(gateway, colorize_pb2.ColorizeRequest(image=data, working_size=128)).width == PHOTO_SIZE[0]


def test_plain_grpc_and_shared_memory_give_the_same_logits(triton_server: TritonServer) -> None:
    lightness = (np.random.default_rng(0).random((1, 1, 128, 96)) * 100).astype(np.float32)

    async def both() -> tuple[np.ndarray, np.ndarray]:
        plain = TritonBackend(triton_server.grpc_url, shared_memory=False)
        shared = TritonBackend(triton_server.grpc_url, shared_memory=True, slots=2)
        try:
            a = await plain.infer(ECCV16, {"L": lightness}, timeout_s=30)
            b = await shared.infer(ECCV16, {"L": lightness}, timeout_s=30)
            # A larger request grows the slot's regions.
            big = np.repeat(np.repeat(lightness, 2, axis=2), 2, axis=3)
            c = await shared.infer(ECCV16, {"L": big}, timeout_s=30)
            assert c["logits"].shape == (1, 313, 64, 48)
            return a["logits"], b["logits"]
        finally:
            await plain.close()
            await shared.close()

    a, b = asyncio.run(both())
    assert a.shape == (1, 313, 32, 24) and a.dtype == np.float16
    np.testing.assert_array_equal(a, b)


def test_a_slot_forgotten_while_triton_still_holds_it_registers_again(triton_server: TritonServer) -> None:
    """After a failed call the backend forgets the slot's regions, assuming Triton restarted; when Triton
    did not, it still holds their names and answered ALREADY_EXISTS: every later call was UNAVAILABLE."""
    lightness = (np.random.default_rng(1).random((1, 1, 64, 64)) * 100).astype(np.float32)

    async def twice() -> tuple[np.ndarray, np.ndarray]:
        shared = TritonBackend(triton_server.grpc_url, shared_memory=True, slots=1)
        try:
            first = await shared.infer(ECCV16, {"L": lightness}, timeout_s=30)
            (slot,) = shared._all_slots
            shared._forget(slot)  # what a "shared memory region" error does; Triton keeps the names
            second = await shared.infer(ECCV16, {"L": lightness}, timeout_s=30)
            return first["logits"], second["logits"]
        finally:
            await shared.close()

    first, second = asyncio.run(twice())
    np.testing.assert_array_equal(first, second)


def test_triton_down_is_unavailable(gateway_factory: Callable[..., GatewayProcess], samples: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    gateway = gateway_factory(nowhere, shared_memory=False, wait_serving=False)
    with grpc.insecure_channel(gateway.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    data = (samples / PHOTO).read_bytes()
    with pytest.raises(grpc.RpcError) as info:
        call(gateway, colorize_pb2.ColorizeRequest(image=data), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.skipif(
    not os.environ.get("PRIORLAB_ECCV16_OFFICIAL"),
    reason="golden comparison needs the authors' checkpoint: set PRIORLAB_ECCV16_OFFICIAL=/path/to/"
    "colorization_release_v2-9b330a0b.pth (not downloadable here; never shipped)",
)
@pytest.mark.skipif(
    not all((GOLDEN_DIR / name).is_file() for name in GOLDEN_FILES),
    reason="golden comparison needs the authors' test photo and output, which are not redistributable: set "
    "PRIORLAB_GOLDEN_DIR to a folder holding ansel_adams3.jpg and saved_eccv16.png (richzhang/colorization "
    "imgs/ and imgs_out/)",
)
def test_official_checkpoint_reproduces_the_golden_output(
    tmp_path: Path, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    from export.__main__ import export_to_repository

    export_to_repository(
        "eccv16", tmp_path / "repo", weights_file=Path(os.environ["PRIORLAB_ECCV16_OFFICIAL"])
    )
    triton = TritonServer.start(tmp_path / "repo", tmp_path / "triton")
    try:
        gateway = gateway_factory(triton.grpc_url, shared_memory=True)
        data = (GOLDEN_DIR / "ansel_adams3.jpg").read_bytes()
        # Upstream's PyTorch forward is the plain softmax mean (T=1), see docs/colorization.md §1.2.
        response = call(gateway, colorize_pb2.ColorizeRequest(image=data, temperature=1.0))
        out = np.asarray(Image.open(io.BytesIO(response.image)).convert("RGB")).astype(float)
        expected = np.asarray(Image.open(GOLDEN_DIR / "saved_eccv16.png").convert("RGB")).astype(float)
        assert response.checkpoint == "eccv16-official"
        assert np.abs(out - expected).mean() < 3.0
    finally:
        triton.stop()
