"""OpenVINO on the CPU: ONNX → OpenVINO IR (kept at full precision), compiled for fp32 or bf16."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdetr_service.inference.backends.export import OUTPUTS, cache_entry, cached, export_onnx, versions

HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoRunner:
    """A compiled OpenVINO model and its one infer request as a Runner."""

    def __init__(self, xml: Path, precision: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            # Set explicitly: OpenVINO's CPU default is bf16 wherever the CPU has it.
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
            # Pinned threads cannot move off the core a decoder is using; the OS balances better.
            "ENABLE_CPU_PINNING": False,
            # The compiled blob, so the second start skips compilation too.
            "CACHE_DIR": str(xml.parent / "compiled"),
        }
        self.compiled = core.compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(name) for name in OUTPUTS]

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.request.infer([pixels.float().numpy()])
        # The request reuses its output buffers on the next call: copy out.
        logits, boxes = (torch.from_numpy(result[port].copy()) for port in self._outputs)
        return logits, boxes


def openvino_runner(
    model: torch.nn.Module, *, input_size: int, precision: str, cache_dir: Path, threads: int
) -> OpenVinoRunner:
    """Export `model` to an IR (or find it in the cache) and compile it for the CPU."""
    if precision not in HINTS:
        raise ValueError(f"OpenVINO on the CPU runs fp32 or bf16, not {precision}")
    model = model.to("cpu", torch.float32)
    # One IR serves both precisions: bf16 is a compile-time hint, the weights stay fp32.
    key = dict(backend="openvino", precision="ir-fp32", input_size=input_size, versions=versions("openvino"))

    def build(folder: Path) -> dict:
        import openvino as ov

        onnx_path = export_onnx(model, folder / "model.onnx", input_size)
        # compress_to_fp16 defaults to True: it would round every weight to fp16, drift no one asked for.
        ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"), compress_to_fp16=False)
        onnx_path.unlink()
        return key

    entry = cached(cache_entry(cache_dir, model, **key), build, "OpenVINO export")
    return OpenVinoRunner(entry / "model.xml", precision, threads)
