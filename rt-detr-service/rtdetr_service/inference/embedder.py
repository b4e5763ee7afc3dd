"""The image–text encoder (CLIP/SigLIP family) events are embedded with: `EMBED_MODEL` through
transformers' `AutoModel` + `AutoProcessor`, its two towers on the backend `EMBED_BACKEND` picks.

It implements `core.search.Embedder`: crops and texts in, L2-normalised float32 rows out, in batches
of at most `EMBED_BATCH`. Pixels are prepared by the checkpoint's own image processor (its resize,
crop, mean and std: parity with the model's training by construction) and texts by its tokenizer,
padded to the tower's full length (SigLIP was trained so) and cut there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rtdetr_service.inference import backends
from rtdetr_service.inference.backends.towers import Inputs, TorchTower, Tower, TowerRunner, exported_tower
from rtdetr_service.inference.detector import ModelLoadError
from rtdetr_service.inference.loading import HUB_ID
from rtdetr_service.inference.random_weights import UNTRAINED_MARKER, random_embedder, siglip_config
from rtdetr_service.inference.settings import DEFAULT_EMBED_MODEL, MODEL_CACHE_DIR, EmbedSettings, InferenceSettings

log = logging.getLogger(__name__)

DEFAULT_EMBED_NAME = "google/siglip2-base-patch16-224"


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    """How the encoder runs, for the logs and /ready."""

    backend: str
    device: str
    precision: str
    reason: str
    image_size: tuple[int, int]
    text_length: int


class ClipEmbedder:
    """A CLIP/SigLIP model's two towers behind `core.search.Embedder`."""

    def __init__(
        self, processor, image_tower: TowerRunner, text_tower: TowerRunner, *, model_id: str, dim: int, trained: bool,
        info: EmbedderInfo, max_batch: int, text_inputs: tuple[str, ...],
    ) -> None:  # fmt: skip
        self.processor = processor
        self.image_tower, self.text_tower = image_tower, text_tower
        self.model_id, self.dim, self.trained = model_id, dim, trained
        self.info = info
        self.max_batch = max_batch
        self.text_inputs = text_inputs

    def pixels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Crops → the model's float32 pixel batch (N, 3, H, W), refusing what is not an RGB crop."""
        for i, image in enumerate(images):
            _check_crop(i, image)
        prepared = self.processor.image_processor(
            images=list(images), return_tensors="np", input_data_format="channels_last"
        )
        return np.ascontiguousarray(prepared["pixel_values"], dtype=np.float32)

    def tokens(self, texts: Sequence[str]) -> Inputs:
        """Texts → the text tower's inputs, padded to its full length and cut there."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
        encoded = self.processor.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.info.text_length, return_tensors="np"
        )
        return {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in self.text_inputs}

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 HxWx3 crops of any size → (N, dim) float32, each row L2-normalised."""
        rows = [
            self.image_tower({"pixel_values": self.pixels(images[start : start + self.max_batch])})
            for start in range(0, len(images), self.max_batch)
        ]
        return _normalised(rows, self.dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → (N, dim) float32, each row L2-normalised; longer texts are cut at the tower's length."""
        rows = [
            self.text_tower(self.tokens(texts[start : start + self.max_batch]))
            for start in range(0, len(texts), self.max_batch)
        ]
        return _normalised(rows, self.dim)


def _check_crop(index: int, image: object) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"crop {index} is a {type(image).__name__}, not a numpy array")
    if image.dtype != np.uint8:
        raise ValueError(f"crop {index} is {image.dtype}, not uint8 RGB")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"crop {index} has shape {image.shape}, not height x width x 3 (RGB)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"crop {index} is empty ({image.shape})")


def _normalised(rows: list[np.ndarray], dim: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, dim), np.float32)
    vectors = np.concatenate(rows).astype(np.float32, copy=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# -- loading ----------------------------------------------------------------------------------------------


def load_embed_model(spec: str, is_default: bool = False) -> tuple[torch.nn.Module, object, str]:
    """EMBED_MODEL's model and processor on the CPU in fp32, and its name: a folder, or a hub id
    from the local cache only (a start never downloads). Only the default may be missing: then a
    random-weight model of its architecture, conditioned and marked untrained."""
    from transformers import AutoModel, AutoProcessor

    path = Path(spec)
    if path.exists() or (not is_default and HUB_ID.match(spec)):
        try:
            processor = AutoProcessor.from_pretrained(spec, local_files_only=True)
            model = AutoModel.from_pretrained(spec, local_files_only=True, attn_implementation="eager")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Cannot load an image–text model from EMBED_MODEL={spec}: {exc}. A hub id must already be "
                "in the local cache: run `make models` where there is internet"
            ) from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(f"EMBED_MODEL={spec} is a {model.config.model_type!r} model, not CLIP/SigLIP-like")
        name = path.name if path.exists() else spec
        if getattr(model.config, UNTRAINED_MARKER, False) and "random" not in name:
            name = f"{name} (random weights)"
        return model.eval(), processor, name
    if is_default:
        log.warning(
            "!!! No trained weights at %s: embedding with a RANDOM-WEIGHT %s. Search and Re-ID results are "
            "meaningless. Run `make models` where there is internet. !!!",
            spec,
            DEFAULT_EMBED_NAME,
        )
        model, processor = random_embedder(siglip_config())
        return model.eval(), processor, f"{DEFAULT_EMBED_NAME.split('/')[-1]} architecture (random weights)"
    raise ModelLoadError(f"EMBED_MODEL={spec} does not exist: give a weights directory or a cached hub id")


def _text_length(model, processor) -> int:
    """The tokens a text is padded and cut to: the text tower's positions, or the tokenizer's bound."""
    positions = getattr(model.config.text_config, "max_position_embeddings", None) or 64
    limit = getattr(processor.tokenizer, "model_max_length", None) or positions
    return int(min(positions, limit))


def _image_size(model) -> tuple[int, int]:
    size = model.config.vision_config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def _choose(backend: str, device: str, half: bool, cpu_precision: str) -> backends.Choice:
    """EMBED_BACKEND on EMBED_DEVICE: as the detector's choice, but torch where it would take TensorRT."""
    try:
        choice = backends.choose(backend, device, half=half, cpu_precision=cpu_precision)
    except backends.BackendError as exc:
        raise ModelLoadError(f"EMBED_{exc}") from exc
    if choice.backend == "tensorrt":  # no TensorRT path for the towers: torch fp16 on the GPU
        return backends.Choice("torch", choice.precision, choice.device, "auto: NVIDIA GPU, torch for the encoder")
    return choice


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """How to load and run EMBED_MODEL: EMBED_* and, where they are unset, the detector's settings."""

    backend: str = "auto"
    device: str = "auto"
    half: bool = True
    cpu_precision: str = "fp32"
    max_batch: int = 32
    threads: int = 0
    cache_dir: Path = MODEL_CACHE_DIR


def embed_options(settings: EmbedSettings, inference: InferenceSettings | None = None) -> EmbedOptions:
    """The options EMBED_* give, with DEVICE, HALF, CPU_PRECISION and MODEL_CACHE_DIR from the
    detector's settings (the web floor's Settings is both: `embed_options(settings, settings)`)."""
    inference = inference or InferenceSettings()
    return EmbedOptions(
        backend=settings.embed_backend,
        device=settings.embed_device or inference.device,
        half=inference.half,
        cpu_precision=inference.cpu_precision,
        max_batch=settings.embed_batch,
        threads=settings.embed_threads,
        cache_dir=inference.model_cache_dir,
    )


def _runners(model, choice: backends.Choice, examples: dict[str, Inputs], options: EmbedOptions, threads: int):
    """The image and text towers on the chosen backend."""
    towers = {kind: Tower(model, kind, tuple(example)) for kind, example in examples.items()}
    if choice.backend == "torch":
        dtype = backends.PIXEL_DTYPES[choice.precision]
        model.to(choice.device, dtype)
        return {kind: TorchTower(tower, choice.device, dtype) for kind, tower in towers.items()}
    return {
        kind: exported_tower(
            tower,
            examples[kind],
            backend=choice.backend,
            precision=choice.precision,
            cache_dir=Path(options.cache_dir),
            threads=threads,
        )
        for kind, tower in towers.items()
    }


def build_embedder(spec: str, options: EmbedOptions, *, is_default: bool = False) -> ClipEmbedder:
    """EMBED_MODEL on the backend the options pick; torch where an export fails and auto chose it."""
    choice = _choose(options.backend, options.device, options.half, options.cpu_precision)
    model, processor, name = load_embed_model(spec, is_default)
    trained = not getattr(model.config, UNTRAINED_MARKER, False)
    length, (height, width) = _text_length(model, processor), _image_size(model)
    text_inputs = tuple(n for n in ("input_ids", "attention_mask") if n in processor.tokenizer.model_input_names)
    examples = {
        "image": {"pixel_values": np.zeros((1, 3, height, width), np.float32)},
        "text": {n: np.ones((1, length), np.int64) for n in text_inputs},
    }
    threads = options.threads or backends.default_cpu_threads(choice.backend)
    try:
        runners = _runners(model, choice, examples, options, threads)
    except Exception as exc:  # an export or compilation failed: any exception of any backend library
        if not choice.fallback:
            raise ModelLoadError(f"EMBED_BACKEND={choice.backend} cannot run EMBED_MODEL={spec}: {exc}") from exc
        log.warning("%s failed for the encoder %s, falling back to torch: %s", choice.backend, name, exc)
        choice = backends.Choice("torch", "fp32", torch.device("cpu"), f"{choice.reason}, but its export failed: torch")
        runners = _runners(model, choice, examples, options, threads)
    info = EmbedderInfo(choice.backend, str(choice.device), choice.precision, choice.reason, (height, width), length)
    dim = int(runners["text"](processor_tokens(processor, length, text_inputs)).shape[1])
    embedder = ClipEmbedder(
        processor, runners["image"], runners["text"], model_id=name, dim=dim, trained=trained, info=info,
        max_batch=options.max_batch, text_inputs=text_inputs,
    )  # fmt: skip
    log.log(
        logging.INFO if trained else logging.WARNING,
        "encoder loaded: %s, %d-d, %s %s on %s (%s)%s",
        name,
        dim,
        choice.backend,
        choice.precision,
        choice.device,
        choice.reason,
        "" if trained else ", RANDOM WEIGHTS",
    )
    return embedder


def processor_tokens(processor, length: int, text_inputs: tuple[str, ...]) -> Inputs:
    """One empty text as the text tower's inputs: the warm-up that also reads the vectors' length."""
    encoded = processor.tokenizer([""], padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in text_inputs}


def load_embedder(settings: EmbedSettings, inference: InferenceSettings | None = None) -> ClipEmbedder:
    """The encoder EMBED_MODEL names, on the backend EMBED_BACKEND picks, warmed up (one crop, one text).

    Only the default EMBED_MODEL may be missing: then a random-weight model of its architecture
    runs, `trained` False and said loudly in the log. Any other unloadable EMBED_MODEL is an error.
    """
    options = embed_options(settings, inference)
    embedder = build_embedder(
        settings.resolved_embed_model(),
        options,
        is_default=Path(settings.embed_model).name == Path(DEFAULT_EMBED_MODEL).name,
    )
    embedder.embed_images([np.zeros((32, 32, 3), np.uint8)])
    return embedder
