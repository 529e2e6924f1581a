from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from colorizers import weights
from colorizers.eccv16 import ECCVGenerator
from contract import ECCV16, MODELS
from export.__main__ import export_to_repository
from export.__main__ import main as export_main
from export.onnx_export import check_parity, export_model, graph_module, to_onnx_fp32

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def small_model() -> ECCVGenerator:
    torch.manual_seed(1)
    model = ECCVGenerator(width=0.125)
    # Non-trivial BN statistics, so a wrong BN export would show.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(small_model: ECCVGenerator) -> tuple[onnx.ModelProto, list]:
    return export_model(small_model, ECCV16, parity_sizes=((256, 256), (96, 160)))


def test_tensor_names_and_dtypes_come_from_the_contract(exported: tuple[onnx.ModelProto, list]) -> None:
    model, _ = exported
    assert [i.name for i in model.graph.input] == ["L"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_fp32_parity_at_two_sizes(exported: tuple[onnx.ModelProto, list]) -> None:
    _, parity = exported
    assert [p.shape for p in parity] == [(1, 1, 256, 256), (2, 1, 96, 160)]
    assert all(p.max_abs_diff <= 1e-4 for p in parity)


@pytest.mark.parametrize(("n", "h", "w"), [(1, 64, 64), (3, 128, 72)])
def test_dynamic_batch_and_size_fp16_logits(
    exported: tuple[onnx.ModelProto, list], small_model: ECCVGenerator, n: int, h: int, w: int
) -> None:
    session = ort.InferenceSession(exported[0].SerializeToString(), providers=["CPUExecutionProvider"])
    lightness = torch.rand(n, 1, h, w) * 100
    (got,) = session.run(None, {"L": lightness.numpy()})
    assert got.dtype == np.float16 and got.shape == (n, 313, h // 4, w // 4)
    with torch.no_grad():
        want = small_model.logits(lightness).numpy()
    np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-2, rtol=1e-2)


def test_parity_gate_fails_on_a_different_network(small_model: ECCVGenerator) -> None:
    module = graph_module(small_model, ECCV16)
    fp32 = to_onnx_fp32(module, ECCV16, (torch.rand(1, 1, 64, 64) * 100,))
    other = graph_module(ECCVGenerator(width=0.125).eval(), ECCV16)
    with pytest.raises(ValueError, match="parity failed"):
        check_parity(fp32, other, (torch.rand(1, 1, 64, 64) * 100,), atol=1e-4)


def test_repository_layout_and_configs(tmp_path: Path) -> None:
    version_dir = export_to_repository("eccv16", tmp_path)
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx", "model.py"]
    cpu = (tmp_path / "eccv16" / "configs" / "cpu.pbtxt").read_text()
    gpu = (tmp_path / "eccv16" / "configs" / "gpu.pbtxt").read_text()
    assert 'backend: "python"' in cpu and "KIND_CPU" in cpu and "timeout_action: REJECT" in cpu
    assert '"ORT_ALLOW_SPINNING" value: { string_value: "0" }' in cpu and "model_warmup" in cpu
    assert (
        'backend: "onnxruntime"' in gpu
        and 'name: "tensorrt"' in gpu
        and '"precision_mode" value: "FP16"' in gpu
    )
    default = weights.REGISTRY[weights.DEFAULT["eccv16"]]
    assert f'"checkpoint" value: {{ string_value: "{default.name}" }}' in cpu
    assert "input.1" not in cpu + gpu


def test_committed_configs_are_what_export_writes(tmp_path: Path) -> None:
    # The configs in git are reviewed in diffs; they must not drift from the generator.
    repo = Path(__file__).resolve().parents[2] / "model_repository"
    for name in MODELS:
        export_to_repository(name, tmp_path)
        for config in ("cpu.pbtxt", "gpu.pbtxt"):
            committed = (repo / name / "configs" / config).read_text()
            assert committed == (tmp_path / name / "configs" / config).read_text(), f"{name}/{config} drifted"


def test_tensorrt_plan_says_why_it_cannot_run_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    from export import tensorrt_plan

    if tensorrt_plan._why_not_here() is None:
        pytest.skip("this host can build TensorRT plans")
    assert tensorrt_plan.main([]) == 2
    err = capsys.readouterr().err
    assert "cannot build a TensorRT plan on this host" in err and ("tensorrt" in err or "CUDA" in err)


def test_graph_side_annealed_mean_equals_the_gateway_decode(small_model: ECCVGenerator) -> None:
    # eccv16_ab decodes in the graph; the gateway's numpy decode of eccv16's logits is the reference.
    from contract import ECCV16_AB
    from service.color.ab_decode import annealed_mean

    with torch.no_grad():
        sharp = ECCVGenerator(width=0.125).eval()
        sharp.load_state_dict(small_model.state_dict())
        sharp_head = sharp.model8[6]
        assert isinstance(sharp_head, torch.nn.Conv2d)
        sharp_head.weight.mul_(30)  # peaked logits, so T matters
    decoded, _ = export_model(sharp, ECCV16_AB, parity_sizes=((64, 64),))
    logits_graph, _ = export_model(sharp, ECCV16, parity_sizes=((64, 64),))
    lightness = (torch.rand(2, 1, 64, 96) * 100).numpy()
    temperature = np.array([[0.2], [0.9]], np.float32)
    (ab,) = ort.InferenceSession(decoded.SerializeToString()).run(None, {"L": lightness, "T": temperature})
    (logits,) = ort.InferenceSession(logits_graph.SerializeToString()).run(None, {"L": lightness})
    assert ab.dtype == np.float16 and ab.shape == (2, 2, 16, 24)
    for i, t in enumerate(temperature[:, 0]):
        reference = annealed_mean(logits[i : i + 1], float(t))[0]
        # FP16 on both sides (logits vs ab), ab in Lab units within ±110.
        np.testing.assert_allclose(ab[i].astype(np.float32), reference, atol=0.25)
    assert np.abs(ab[0].astype(np.float32) - ab[1].astype(np.float32)).max() > 1.0


@pytest.fixture(scope="module")
def sharp_larsson() -> torch.nn.Module:
    from colorizers.larsson16 import LarssonColorizer

    torch.manual_seed(2)
    model = LarssonColorizer(width=0.125).eval()
    with torch.no_grad():  # peaked distributions: near-uniform ones would pass any parity check
        model.prediction_h.weight.mul_(300)
        model.prediction_c.weight.mul_(300)
    return model


def test_larsson16_exports_hue_and_chroma_distributions_with_parity(sharp_larsson: torch.nn.Module) -> None:
    from contract import LARSSON16

    # 72x104 is not a multiple of 32: the graph's own edge padding must export with dynamic shapes.
    model, parity = export_model(sharp_larsson, LARSSON16, parity_sizes=((256, 256), (72, 104)))
    assert [o.name for o in model.graph.output] == ["hue", "chroma"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in model.graph.output)
    assert len(parity) == 4 and all(p.max_abs_diff <= 1e-4 for p in parity)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hue, chroma = session.run(
        None, {"L": (np.random.default_rng(0).random((2, 1, 96, 64)) * 100).astype(np.float32)}
    )
    assert hue.shape == chroma.shape == (2, 32, 24, 16) and hue.dtype == np.float16
    assert hue.max() > 0.5 and np.allclose(hue.astype(np.float32).sum(1), 1, atol=1e-2)


def test_larsson16_parity_gate_fails_on_a_different_network(sharp_larsson: torch.nn.Module) -> None:
    from colorizers.larsson16 import LarssonColorizer
    from contract import LARSSON16

    fp32 = to_onnx_fp32(graph_module(sharp_larsson, LARSSON16), LARSSON16, (torch.rand(1, 1, 64, 64) * 100,))
    other = LarssonColorizer(width=0.125).eval()
    with torch.no_grad():
        other.load_state_dict(sharp_larsson.state_dict())
        bias = other.prediction_c.bias
        assert bias is not None
        bias[0] += 5.0  # one bin: a uniform shift would leave the softmax unchanged
    with pytest.raises(ValueError, match="parity failed"):
        check_parity(fp32, graph_module(other, LARSSON16), (torch.rand(1, 1, 64, 64) * 100,), atol=1e-4)


def test_tritons_queue_policy_matches_the_gateways_admission() -> None:
    """Triton drops a queued request when the gateway stops waiting for it (issue #16): at the caller's
    own deadline (sent as the request timeout), else at the gateway's cap for callers without one; and its
    queue holds at least one gateway's calls in flight, which the gateway's admission already bounds."""
    from export.triton_config import MAX_QUEUE_SIZE, QUEUE_TIMEOUT_US, cpu_config, gpu_config
    from service.gateway.settings import Settings

    settings = Settings()
    assert round(settings.triton_timeout_s * 1e6) == QUEUE_TIMEOUT_US
    assert settings.max_concurrent_colorize <= MAX_QUEUE_SIZE
    for config in (cpu_config(ECCV16, {}), gpu_config(ECCV16, {})):
        assert (
            f"default_queue_policy {{ max_queue_size: {MAX_QUEUE_SIZE} timeout_action: REJECT "
            f"default_timeout_microseconds: {QUEUE_TIMEOUT_US} allow_timeout_override: true }}"
        ) in config


def test_export_refuses_a_missing_weights_file_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retired = next(c for c in weights.REGISTRY.values() if c.retired and c.arch == "siggraph17")
    repository = tmp_path / "repo"
    missing = tmp_path / str(retired.filename)
    with pytest.raises(SystemExit) as stop:
        export_main(["--repository", str(repository), "--model", "siggraph17", "--weights", str(missing)])
    assert stop.value.code == 2 and not repository.exists()
    err = capsys.readouterr().err
    assert f"--weights: no checkpoint file {missing}" in err and f"git show {retired.retired}:" in err
