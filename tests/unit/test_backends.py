"""Backend choice, CPU threads, input sizes and the export cache: the rules, without exporting."""

from __future__ import annotations

import threading

import pytest
import torch

from rtdetr_service.inference import backends
from rtdetr_service.inference.backends.export import cache_entry, cached, weights_digest
from rtdetr_service.inference.loading import fitted_input_size
from rtdetr_service.inference.random_weights import random_weights_model
from rtdetr_service.web.settings import Settings

from tiny_model import tiny_config_of


def test_auto_on_a_cpu_takes_openvino_in_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "available", lambda name: name == "openvino")
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert backends.choose("auto", "auto", cpu_precision="fp32").precision == "fp32"  # parity with torch
    choice = backends.choose("auto", "auto", cpu_precision=Settings(_env_file=None, auth_disabled=True).cpu_precision)
    assert (choice.backend, choice.precision, choice.device.type) == ("openvino", "bf16", "cpu")
    assert "auto" in choice.reason and "bf16" in choice.reason and choice.fallback

    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.choose("auto", "cpu", cpu_precision="auto").precision == "fp32"
    assert backends.choose("auto", "cpu", cpu_precision="bf16").precision == "bf16"


def test_auto_without_openvino_runs_torch_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "available", lambda name: False)
    choice = backends.choose("auto", "auto")
    assert (choice.backend, choice.precision) == ("torch", "fp32")
    assert "no OpenVINO" in choice.reason


def test_auto_on_nvidia_takes_tensorrt_when_importable_else_torch_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "available", lambda name: name == "tensorrt")
    assert backends.choose("auto", "auto").backend == "tensorrt"
    monkeypatch.setattr(backends, "available", lambda name: False)
    choice = backends.choose("auto", "auto", half=True)
    assert (choice.backend, choice.precision, choice.device.type) == ("torch", "fp16", "cuda")
    assert "tensorrt package not installed" in choice.reason
    # DEVICE=cpu on a GPU host still means the CPU.
    monkeypatch.setattr(backends, "available", lambda name: name in ("tensorrt", "openvino"))
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.choose("auto", "cpu").backend == "openvino"


@pytest.mark.parametrize(
    ("backend", "device", "cuda", "installed", "message"),
    [
        ("tensorrt", "auto", False, {"tensorrt"}, "needs an NVIDIA GPU"),
        ("tensorrt", "auto", True, set(), "not installed"),
        ("openvino", "cuda", True, {"openvino"}, "runs on the CPU"),
        ("onnxruntime", "auto", False, set(), "not installed"),
        ("torch", "cuda", False, set(), "DEVICE=cuda"),
    ],
)
def test_a_named_backend_that_cannot_run_here_is_an_error_not_a_substitute(
    monkeypatch, backend, device, cuda, installed, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(backends, "available", lambda name: name in installed)
    with pytest.raises(backends.BackendError, match=message):
        backends.choose(backend, device)


def test_onnxruntime_refuses_bf16_it_cannot_compute(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends, "available", lambda name: True)
    with pytest.raises(backends.BackendError, match="fp32 only"):
        backends.choose("onnxruntime", "cpu", cpu_precision="bf16")
    assert backends.choose("onnxruntime", "cpu").precision == "fp32"


def test_default_cpu_threads_leave_torch_a_core_short_and_give_the_exported_backends_all(monkeypatch):
    # torch's OpenMP pool stalls when a decoder takes one of its cores; OpenVINO / ONNX Runtime do not
    for cores, torch_threads, exported in (({0, 1}, 1, 2), (set(range(16)), 15, 16), ({0}, 1, 1)):
        monkeypatch.setattr(backends.os, "sched_getaffinity", lambda pid, c=cores: c, raising=False)
        assert backends.default_cpu_threads("torch") == backends.default_cpu_threads() == torch_threads
        assert backends.default_cpu_threads("openvino") == backends.default_cpu_threads("onnxruntime") == exported


def test_settings_name_the_backend_knobs():
    settings = Settings(_env_file=None, auth_disabled=True)
    assert (settings.backend, settings.cpu_precision, settings.cpu_threads) == ("auto", "auto", 0)
    assert settings.model_cache_dir.parts[-2:] == ("models", ".cache")
    with pytest.raises(ValueError, match="backend"):
        Settings(_env_file=None, auth_disabled=True, backend="tflite")


def test_input_size_fits_windowed_vit_backbones():
    # RF-DETR's released backbone: 14-pixel patches, 4 windows per side -> multiples of 56.
    rf = tiny_config_of("rf_detr")
    rf.backbone_config.patch_size, rf.backbone_config.num_windows = 14, 4
    assert fitted_input_size(rf, 640) == 616
    assert fitted_input_size(rf, 560) == 560
    assert fitted_input_size(tiny_config_of("lw_detr"), 320) == 320  # 16 x 2 windows per side
    assert fitted_input_size(tiny_config_of("d_fine"), 640) == 640  # CNN: any multiple of 32


def test_cache_key_follows_weights_input_size_and_backend(tmp_path):
    model = random_weights_model(tiny_config_of("rt_detr_v2"), seed=1)
    same = random_weights_model(tiny_config_of("rt_detr_v2"), seed=1)
    assert weights_digest(model) == weights_digest(same)
    base = dict(backend="openvino", precision="fp32", input_size=320, versions={"openvino": "1"})
    entry = cache_entry(tmp_path, model, **base)
    assert entry == cache_entry(tmp_path, same, **base)
    assert entry.name.startswith("rt_detr_v2-320-openvino-fp32-")
    for change in (dict(input_size=640), dict(backend="onnxruntime"), dict(versions={"openvino": "2"})):
        assert cache_entry(tmp_path, model, **{**base, **change}) != entry
    with torch.no_grad():
        next(same.parameters()).add_(1e-3)
    assert cache_entry(tmp_path, same, **base) != entry


def test_cache_entries_appear_whole_or_not_at_all(tmp_path):
    entry = tmp_path / "cache" / "model-key"
    calls = []

    def failing(folder):
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError):
        cached(entry, failing, "test")
    assert not entry.exists() and list(entry.parent.iterdir()) == []  # no scratch left behind

    def build(folder):
        calls.append(folder)
        (folder / "model.onnx").write_bytes(b"graph")
        return {"backend": "test"}

    # Two processes' worth of racing builders: both succeed, one entry, each sees it complete.
    results = []
    threads = [threading.Thread(target=lambda: results.append(cached(entry, build, "test"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [entry, entry]
    assert (entry / "model.onnx").read_bytes() == b"graph" and (entry / "meta.json").is_file()
    built = len(calls)
    assert cached(entry, build, "test") == entry and len(calls) == built  # the next start builds nothing
    assert sorted(p.name for p in entry.parent.iterdir()) == ["model-key"]
