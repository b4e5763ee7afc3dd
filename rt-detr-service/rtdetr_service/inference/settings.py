"""What loading the models and the inference worker read: MODEL, its device, backend and batching;
EMBED_MODEL, the image–text encoder events are embedded with, and how it runs; VLM_*, the
vision-language model that describes events and answers questions, local or hosted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from rtdetr_service.core.config import REPO_ROOT, CommaList, SettingsModel

DEFAULT_MODEL = "models/rtdetr_v2_r18vd"
DEFAULT_EMBED_MODEL = "models/siglip2-base-patch16-224"
DEFAULT_VLM_MODEL = "models/SmolVLM-256M-Instruct"
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


class VlmSettings(SettingsModel):
    """The vision-language model (VLM_*): which provider, where it is, and the bounds on every call."""

    vlm_provider: Literal["off", "openai", "transformers"] = Field(
        "off",
        description="off; openai = any OpenAI-compatible chat-completions endpoint with image input "
        "(VLM_BASE_URL, VLM_API_KEYS); transformers = VLM_MODEL run locally on VLM_DEVICE.",
    )
    vlm_model: str = Field(
        DEFAULT_VLM_MODEL,
        description="transformers: weights directory, or a hub id already in the local cache (never "
        "downloaded at start); openai: the model name the endpoint serves.",
    )
    vlm_base_url: SecretStr = Field(
        SecretStr(""),
        description="openai: the endpoint's base URL, up to /v1 (e.g. http://127.0.0.1:11434/v1 for Ollama).",
    )
    vlm_api_keys: CommaList[SecretStr] = Field(
        default_factory=list,
        description="openai: comma-separated API keys, the pool; in priority order for the priority "
        "strategy. Empty = no Authorization header (a local server).",
    )
    vlm_key_strategy: Literal["round_robin", "least_loaded", "priority"] = Field(
        "round_robin", description="Which usable key takes the next request."
    )
    vlm_key_qps: float = Field(
        0.0, ge=0, le=10_000, description="Most requests per second per key, spread one every 1/QPS s (0 = no limit)."
    )
    vlm_key_rpm: int = Field(0, ge=0, le=1_000_000, description="Most requests per minute per key (0 = no limit).")
    vlm_key_concurrency: int = Field(4, ge=1, le=256, description="Most requests in flight per key.")
    vlm_ask_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="The share of the provider's capacity POST /ask may hold at once, so rule questions "
        "and descriptions always find room.",
    )
    vlm_cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="How long a key rests after a 429 that gives no Retry-After."
    )
    vlm_timeout_s: float = Field(
        60.0, gt=0, le=600, description="Bound on one request in all: waiting for a key, retries and the answer."
    )
    vlm_retries: int = Field(
        2, ge=0, le=10, description="Retries of a 5xx, a broken connection or a timeout (backoff); 4xx never."
    )
    vlm_max_tokens: int = Field(200, ge=1, le=4096, description="Most tokens the model may write per answer.")
    vlm_answer_max_chars: int = Field(2000, ge=16, le=20_000, description="Answers are cut to this many characters.")
    vlm_prompt_max_chars: int = Field(
        4000, ge=16, le=100_000, description="Longest prompt (question and instructions) sent to the model."
    )
    vlm_image_max_px: int = Field(
        768, ge=64, le=4096, description="Images sent to the model are shrunk to this long side (JPEG)."
    )
    vlm_images_max: int = Field(4, ge=1, le=16, description="Most images in one request.")
    vlm_device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="transformers: the model's device; unset = DEVICE, the detector's."
    )
    vlm_batch: int = Field(4, ge=1, le=64, description="transformers: most requests in one generate call.")
    vlm_threads: int = Field(
        0, ge=0, le=256, description="transformers on the CPU: torch threads of the model (0 = as CPU_THREADS=0)."
    )

    def resolved_vlm_model(self) -> str:
        """VLM_MODEL as a local path when it names one, else as given (a hub id or an endpoint's name)."""
        return _resolved(self.vlm_model)


def _resolved(spec: str) -> str:
    """A model spec as a local path when it names one (relative to the working directory, then to
    the repository), else as given (a hub id, or a path that does not exist yet)."""
    path = Path(spec)
    if path.is_absolute() or path.exists():
        return str(path)
    if (REPO_ROOT / path).exists():
        return str(REPO_ROOT / path)
    return spec
