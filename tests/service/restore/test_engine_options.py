"""EngineOptions' automatic switches (service/restore/tuning.py) and the bf16 path through the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.bus.request import DenoiseTask, EngineOptions, FixedIterations
from service.restore import tuning
from service.restore.engine import restore
from service.restore.isa import native_bf16
from service.restore.tuning import resolve

CPU = torch.device("cpu")


def _cpu(monkeypatch: pytest.MonkeyPatch, capability: str, amx: bool, avx512_bf16: bool) -> None:
    """Pretend to be a CPU with these features (the probes native_bf16 reads)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


class TestValidation:
    @pytest.mark.parametrize("name", ["bf16", "channels_last"])
    def test_switches_are_true_false_or_auto(self, name: str) -> None:
        with pytest.raises(ValueError, match=f"{name}.*'yes'"):
            EngineOptions(**{name: "yes"})  # type: ignore[arg-type]

    def test_auto_by_default(self) -> None:
        assert EngineOptions().bf16 is None and EngineOptions().channels_last is None


class TestNativeBf16:
    def test_amx_host(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
        assert native_bf16() == (True, "AMX")

    def test_avx512_bf16_without_amx(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=False, avx512_bf16=True)
        assert native_bf16() == (True, "avx512_bf16")

    def test_avx512_without_bf16(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=False, avx512_bf16=False)
        native, why = native_bf16()
        assert not native and "neither avx512_bf16 nor AMX" in why

    def test_avx2_kernels(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX2", amx=True, avx512_bf16=True)  # e.g. ATEN_CPU_CAPABILITY=avx2
        native, why = native_bf16()
        assert not native and "AVX2" in why

    @pytest.mark.parametrize(
        ("cap", "native"), [("AVX2", False), ("AVX512_CORE", False), ("AVX512_CORE_AMX", True)]
    )
    def test_onednn_isa_cap(self, monkeypatch: pytest.MonkeyPatch, cap: str, native: bool) -> None:
        _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert native_bf16()[0] is native


class TestResolve:
    @pytest.mark.parametrize(("amx", "avx512_bf16"), [(True, True), (True, False), (False, True)])
    def test_bf16_is_the_default_on_a_native_bf16_cpu(
        self, monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool
    ) -> None:
        _cpu(monkeypatch, "AVX512", amx=amx, avx512_bf16=avx512_bf16)
        auto = resolve(EngineOptions(), CPU)  # within ±0.1 dB of fp32 over 12 seeds: on by default
        assert auto.bf16 is True and auto.channels_last is True  # oneDNN's bf16 kernels are NHWC
        got = resolve(EngineOptions(bf16=True), CPU)
        assert got.bf16 is True and got.channels_last is True
        # an explicit layout wins over the automatic one
        assert resolve(EngineOptions(bf16=True, channels_last=False), CPU).channels_last is False

    def test_auto_off_without_native_bf16(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX2", amx=False, avx512_bf16=False)
        got = resolve(EngineOptions(), CPU)
        assert got.bf16 is False and got.channels_last is False  # NCHW is faster at AVX2

    def test_fp32_at_avx512_runs_nhwc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=False, avx512_bf16=False)
        got = resolve(EngineOptions(), CPU)
        assert got.bf16 is False and got.channels_last is True
        _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
        got = resolve(EngineOptions(bf16=False), CPU)  # fp32 asked for on a bf16 CPU
        assert got.bf16 is False and got.channels_last is True

    def test_a_onednn_cap_below_bf16_keeps_the_default_fp32(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
        assert resolve(EngineOptions(), CPU).bf16 is False

    def test_asking_for_bf16_without_it_is_refused_with_the_reason(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _cpu(monkeypatch, "AVX512", amx=False, avx512_bf16=False)
        with pytest.raises(ValueError, match=r"bf16=True needs native bf16.*neither avx512_bf16 nor AMX"):
            resolve(EngineOptions(bf16=True), CPU)
        img = np.full((16, 16, 3), 0.5, np.float32)
        with pytest.raises(ValueError, match="bf16=True"):
            restore(img, DenoiseTask(), stopping=FixedIterations(1), options=EngineOptions(bf16=True))

    def test_off_is_off_whatever_the_cpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        _cpu(monkeypatch, "AVX512", amx=True, avx512_bf16=True)
        assert resolve(EngineOptions(bf16=False), CPU).bf16 is False

    def test_cuda_stays_fp32(self) -> None:
        cuda = torch.device("cuda")
        got = resolve(EngineOptions(), cuda)
        assert got.bf16 is False and got.channels_last is False
        with pytest.raises(ValueError, match="CPU option"):
            resolve(EngineOptions(bf16=True), cuda)


def test_bf16_run_is_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a CPU without native bf16 the path still runs (emulated, slower): say it is native so the test
    # checks the maths everywhere.
    monkeypatch.setattr(tuning, "native_bf16", lambda: (True, "test"))
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    task, stop = DenoiseTask(sigma=0.1), FixedIterations(20)
    fp32 = restore(img, task, stopping=stop, options=EngineOptions(bf16=False, channels_last=False))
    bf16 = restore(img, task, stopping=stop, options=EngineOptions(bf16=True))
    assert bf16.image.dtype == np.float32
    assert not np.array_equal(bf16.losses, fp32.losses)  # the bf16 path really ran
    # Same network, z and noise stream: the first loss differs by activation rounding only; Adam's first,
    # nearly sign-like steps amplify that for a while (up to ~7% here), and the fits meet again.
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=2e-3)
    assert np.mean(bf16.losses[-5:]) == pytest.approx(np.mean(fp32.losses[-5:]), rel=1e-2)
    assert np.sqrt(np.mean((bf16.image - fp32.image) ** 2)) < 0.02


def test_the_default_run_is_the_bf16_run_where_bf16_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the engine, not only `resolve`: EngineOptions() on a bf16 CPU runs exactly what bf16=True
    # runs, and not what bf16=False runs. Pretend native where it is not, as above.
    monkeypatch.setattr(tuning, "native_bf16", lambda: (True, "test"))
    img = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    task, stop = DenoiseTask(sigma=0.1), FixedIterations(5)
    default = restore(img, task, stopping=stop, options=EngineOptions())
    bf16 = restore(img, task, stopping=stop, options=EngineOptions(bf16=True))
    fp32 = restore(img, task, stopping=stop, options=EngineOptions(bf16=False))
    assert np.array_equal(default.losses, bf16.losses)
    assert not np.array_equal(default.losses, fp32.losses)
