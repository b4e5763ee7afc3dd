"""What loading the models and the inference worker read: MODEL, its device, backend and batching;
EMBED_MODEL, the image–text encoder events are embedded with, and how it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from rtdetr_service.core.config import REPO_ROOT, SettingsModel

DEFAULT_MODEL = "models/rtdetr_v2_r18vd"
DEFAULT_EMBED_MODEL = "models/siglip2-base-patch16-224"
MODEL_CACHE_DIR = REPO_ROOT / "models" / ".cache"


class InferenceSettings(SettingsModel):
    """The model and how it runs; environment variables use the upper-case field names."""

    model: str = Field(
        DEFAULT_MODEL,
        description="Weights directory, hub id such as PekingU/rtdetr_v2_r18vd, or an ultralytics .pt file.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Inference device.")
    half: bool = Field(True, description="fp16 inference on CUDA (ignored on the CPU).")
    compile: bool = Field(False, description="torch.compile the model on CUDA (slow start, faster batches).")
    input_size: int = Field(640, ge=320, le=1280, multiple_of=32, description="Square model input size.")
    backend: Literal["auto", "torch", "openvino", "onnxruntime", "tensorrt"] = Field(
        "auto",
        description="Where the network runs; auto = TensorRT on NVIDIA (if installed, else torch), OpenVINO on a CPU.",
    )
    cpu_precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto",
        description="CPU arithmetic: auto = bf16 (OpenVINO) where the CPU has it, else fp32; fp32 matches torch.",
    )
    model_cache_dir: Path = Field(
        MODEL_CACHE_DIR,
        description="Where exported models (ONNX, OpenVINO IR, TensorRT engines) are kept.",
    )
    max_batch: int = Field(32, ge=1, le=256, description="Most frames in one forward pass.")
    batch_wait_ms: float = Field(
        2.0, ge=0.0, le=50.0, description="How long the worker waits for more sessions' frames to fill a batch."
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU inference threads (0 = auto: all usable cores for OpenVINO/ONNX Runtime, one less for torch).",
    )

    def resolved_model(self) -> str:
        """MODEL as a local path when it names one (relative to the working directory, then to
        the repository), else as given (a hub id, or a path that does not exist yet)."""
        return _resolved(self.model)


class EmbedSettings(SettingsModel):
    """The image–text encoder (CLIP/SigLIP family) events are embedded with, for search and Re-ID."""

    embed_enabled: Literal["auto", "true", "false"] = Field(
        "auto",
        description="Embed events for search: auto = only when EMBED_MODEL's trained weights are here "
        "(random weights would cost CPU for meaningless vectors).",
    )
    embed_model: str = Field(
        DEFAULT_EMBED_MODEL,
        description="Weights directory, or a hub id already in the local cache (never downloaded at start).",
    )
    embed_backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="Where the encoder runs; auto = torch (fp16 with HALF) on NVIDIA, OpenVINO on a CPU."
    )
    embed_device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="The encoder's device; unset = DEVICE, the detector's."
    )
    embed_batch: int = Field(32, ge=1, le=256, description="Most crops (or texts) in one forward pass.")
    embed_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads of the encoder (0 = as CPU_THREADS=0 does for the detector's backend).",
    )

    def resolved_embed_model(self) -> str:
        """EMBED_MODEL as a local path when it names one, else as given (a hub id)."""
        return _resolved(self.embed_model)

    def embeds(self) -> bool:
        """Whether events get embedded: EMBED_ENABLED, with auto = trained weights are at hand."""
        if self.embed_enabled != "auto":
            return self.embed_enabled == "true"
        spec = self.resolved_embed_model()
        if Path(spec).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            return (Path(spec) / "config.json").is_file()
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def _resolved(spec: str) -> str:
    """A model spec as a local path when it names one (relative to the working directory, then to
    the repository), else as given (a hub id, or a path that does not exist yet)."""
    path = Path(spec)
    if path.is_absolute() or path.exists():
        return str(path)
    if (REPO_ROOT / path).exists():
        return str(REPO_ROOT / path)
    return spec
