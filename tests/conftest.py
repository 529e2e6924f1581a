"""Shared fixtures: the sample photos, and a real Triton server on free ports for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"  # redistributable photos shipped with the repository (samples/README.md)
MODEL_REPOSITORY = REPO / "model_repository"


@pytest.fixture(scope="session")
def samples() -> Path:
    if not (SAMPLES / "README.md").is_file():
        pytest.fail(f"{SAMPLES / 'README.md'} is missing: samples/ ships with the repository")
    return SAMPLES


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver (pytriton wheel) serving model_repository/ with configs/cpu.pbtxt."""
    from service.launch.triton import TritonServer

    if not (MODEL_REPOSITORY / "eccv16" / "1" / "model.onnx").is_file():
        pytest.fail("model_repository has no exported eccv16: run `make models` (make test does)")
    server = TritonServer.start(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()
