"""Shared fixtures: data paths, and a real Triton server on free ports for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_REPOSITORY = REPO / "model_repository"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"test data folder {SHARED_DATA} is missing (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver (pytriton wheel) serving model_repository/ with configs/cpu.pbtxt."""
    from service.triton_launcher import TritonServer

    if not (MODEL_REPOSITORY / "eccv16" / "1" / "model.onnx").is_file():
        pytest.fail("model_repository has no exported eccv16: run `make models` (make test does)")
    server = TritonServer.start(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"))
    yield server
    server.stop()
