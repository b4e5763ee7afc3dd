"""ONNX Runtime on the CPU: the exported ONNX graph, fp32."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdetr_service.inference.backends.export import INPUT, OUTPUTS, cache_entry, cached, export_onnx, versions


def cpu_session(onnx_path: Path, threads: int):
    """An ONNX Runtime CPU session on `threads` threads, sequential, its workers never spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning workers burn the core the decoder needs and stall when it takes it back.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner:
    """An `onnxruntime.InferenceSession` as a Runner."""

    def __init__(self, onnx_path: Path, threads: int) -> None:
        self.session = cpu_session(onnx_path, threads)

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, boxes = self.session.run(list(OUTPUTS), {INPUT: pixels.float().numpy()})
        return torch.from_numpy(logits), torch.from_numpy(boxes)


def onnxruntime_runner(model: torch.nn.Module, *, input_size: int, cache_dir: Path, threads: int) -> OnnxRuntimeRunner:
    """Export `model` (or find it in the cache) and open an ONNX Runtime session on it."""
    model = model.to("cpu", torch.float32)
    key = dict(backend="onnxruntime", precision="fp32", input_size=input_size, versions=versions("onnxruntime"))

    def build(folder: Path) -> dict:
        export_onnx(model, folder / "model.onnx", input_size)
        return key

    entry = cached(cache_entry(cache_dir, model, **key), build, "ONNX export")
    return OnnxRuntimeRunner(entry / "model.onnx", threads)
