"""The image–text encoder's two towers, each its own graph: torch eager, or exported to ONNX and run
by OpenVINO or ONNX Runtime on the CPU, cached under MODEL_CACHE_DIR as the detector's exports are.

A tower runner takes numpy arrays (pixels, or token ids and their mask) and returns the pooled,
projected vectors (the `pooler_output` of `get_image_features` / `get_text_features`), not yet
normalised. Batch size stays dynamic; the pixel size and the token length are fixed by the model.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rtdetr_service.inference.backends.export import OPSET, cache_entry, cached, versions
from rtdetr_service.inference.backends.ort import cpu_session

OUTPUT = "embeddings"
Inputs = dict[str, np.ndarray]
TowerRunner = Callable[[Inputs], np.ndarray]


class Tower(torch.nn.Module):
    """One tower of a CLIP/SigLIP model as a module: its named inputs → its pooled vectors."""

    def __init__(self, model: torch.nn.Module, kind: str, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.kind = kind  # "image" | "text"
        self.input_names = input_names
        self.config = model.config  # the export cache's key reads it

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        features = self.model.get_image_features if self.kind == "image" else self.model.get_text_features
        return features(**named).pooler_output


class TorchTower:
    """A tower in torch eager, on the model's device and in its dtype; numpy in, float32 numpy out."""

    def __init__(self, tower: Tower, device: torch.device, dtype: torch.dtype) -> None:
        self.tower, self.device, self.dtype = tower, device, dtype

    def __call__(self, inputs: Inputs) -> np.ndarray:
        tensors = []
        for name in self.tower.input_names:
            tensor = torch.from_numpy(inputs[name]).to(self.device, non_blocking=True)
            tensors.append(tensor.to(self.dtype) if tensor.is_floating_point() else tensor)
        with torch.inference_mode():
            return self.tower(*tensors).float().cpu().numpy()


class OpenVinoTower:
    """A tower compiled by OpenVINO for the CPU (fp32, or bf16 as a compile-time hint)."""

    def __init__(self, xml: Path, precision: str, threads: int) -> None:
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": threads,
            "ENABLE_CPU_PINNING": False,  # as the detector's: pinned threads cannot leave a decoder's core
            "CACHE_DIR": str(xml.parent / "compiled"),
        }
        self.compiled = ov.Core().compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(OUTPUT)
        self.lock = threading.Lock()  # one infer request: one call at a time

    def __call__(self, inputs: Inputs) -> np.ndarray:
        with self.lock:
            result = self.request.infer(inputs)
            return np.array(result[self.output], dtype=np.float32)  # the request reuses its buffers: copy


class OnnxRuntimeTower:
    """A tower in an ONNX Runtime CPU session."""

    def __init__(self, onnx_path: Path, threads: int) -> None:
        self.session = cpu_session(onnx_path, threads)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.session.run([OUTPUT], inputs)[0].astype(np.float32, copy=False)


def export_tower(tower: Tower, example: Inputs, path: Path) -> Path:
    """Trace a tower (on the CPU, fp32) into an ONNX file with a dynamic batch dimension."""
    tensors = tuple(torch.from_numpy(example[name]) for name in tower.input_names)
    dynamic = {name: {0: "batch"} for name in (*tower.input_names, OUTPUT)}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape computation; they are constants at the
        # fixed pixel size and token length, which the parity tests check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower.eval(),
            tensors,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(tower.input_names),
            output_names=[OUTPUT],
            dynamic_axes=dynamic,
        )
    return path


def exported_tower(
    tower: Tower, example: Inputs, *, backend: str, precision: str, cache_dir: Path, threads: int
) -> TowerRunner:
    """A tower on OpenVINO or ONNX Runtime, exported (or found in the cache) first."""
    shape = "x".join(str(n) for n in next(iter(example.values())).shape[1:])
    stored = "ir-fp32" if backend == "openvino" else "fp32"  # one IR serves both precisions, as the detector's
    key = dict(
        backend=backend,
        precision=stored,
        input_size=f"{tower.kind}{shape}",
        inputs=list(tower.input_names),
        versions=versions(backend),
    )

    def build(folder: Path) -> dict:
        onnx_path = export_tower(tower, example, folder / "model.onnx")
        if backend == "openvino":
            import openvino as ov

            ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"), compress_to_fp16=False)
            onnx_path.unlink()
        return key

    entry = cached(cache_entry(cache_dir, tower, **key), build, f"{backend} export of the {tower.kind} tower")
    if backend == "openvino":
        return OpenVinoTower(entry / "model.xml", precision, threads)
    return OnnxRuntimeTower(entry / "model.onnx", threads)
