"""TensorRT on NVIDIA: an engine built from an ONNX graph of the model in the precision asked for.

The tensorrt package is imported only here, lazily: it is a large download, kept out of
requirements.txt (`pip install tensorrt` on a GPU host). The graph is exported from the model
already in fp16 on the GPU and built as a strongly typed network: TensorRT 11 has no FP16 builder
flag any more, and a graph typed like torch's fp16 model runs the arithmetic the torch fp16 path
runs. The optimisation profile covers batch 1..MAX_BATCH; the engine is cached per GPU model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtdetr_service.inference.backends.export import INPUT, OUTPUTS, cache_entry, cached, export_onnx, versions

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


def build_engine(onnx_path: Path, plan_path: Path, input_size: int, max_batch: int) -> None:
    """Parse the ONNX graph and serialise an engine whose profile covers batch 1..max_batch."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # opt-in on 10.x, always on in 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the ONNX export: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    shape = (3, input_size, input_size)
    # Tuned for full batches: that is when the GPU is the bottleneck; small batches are cheap anyway.
    profile.set_shape(INPUT, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build an engine (see its log above)")
    plan_path.write_bytes(bytes(plan))


class TensorRTRunner:
    """A TensorRT engine as a Runner: reads torch CUDA tensors, writes torch CUDA tensors, on the
    caller's current stream (the detector's own inference stream)."""

    def __init__(self, plan_path: Path, device: torch.device, max_batch: int) -> None:
        import tensorrt as trt

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path} (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.device = device
        self.max_batch = max_batch
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(INPUT))

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pixels.shape[0] > self.max_batch:
            raise ValueError(f"batch of {pixels.shape[0]} exceeds the engine's MAX_BATCH={self.max_batch}")
        pixels = pixels.to(self.input_dtype).contiguous()
        context = self.context
        context.set_input_shape(INPUT, tuple(pixels.shape))
        context.set_tensor_address(INPUT, pixels.data_ptr())
        outputs = []
        for name in OUTPUTS:
            shape = tuple(context.get_tensor_shape(name))
            out = torch.empty(
                shape, dtype=_torch_dtype(self._trt, self.engine.get_tensor_dtype(name)), device=self.device
            )
            context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log)")
        # Keep the input alive until the stream has read it.
        pixels.record_stream(stream)
        return outputs[0], outputs[1]


def tensorrt_runner(
    model: torch.nn.Module, *, input_size: int, precision: str, max_batch: int, cache_dir: Path
) -> TensorRTRunner:
    """Export `model` on the GPU and build its engine (or find both in the cache)."""
    import tensorrt  # noqa: F401 - fail here, before an export, when it is missing

    device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = model.to(device=device, dtype=dtype)
    gpu = torch.cuda.get_device_properties(device)
    key = dict(
        backend="tensorrt",
        precision=precision,
        input_size=input_size,
        max_batch=max_batch,
        gpu=f"{gpu.name} sm_{gpu.major}{gpu.minor}",
        versions=versions("tensorrt"),
    )

    def build(folder: Path) -> dict:
        onnx_path = export_onnx(model, folder / "model.onnx", input_size, dtype)
        build_engine(onnx_path, folder / "model.plan", input_size, max_batch)
        onnx_path.unlink()
        return key

    entry = cached(cache_entry(cache_dir, model, **key), build, "TensorRT engine")
    return TensorRTRunner(entry / "model.plan", device, max_batch)
