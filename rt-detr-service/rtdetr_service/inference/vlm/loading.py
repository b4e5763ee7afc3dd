"""Loading the VLM VLM_PROVIDER names: none (off), a local transformers model, or an OpenAI-compatible
endpoint. Nothing heavy is imported until a provider is asked for: with VLM_PROVIDER=off the
service never loads torch's generation code or an HTTP client for it."""

from __future__ import annotations

from pathlib import Path

from rtdetr_service.core.vlm import VisionLanguageModel
from rtdetr_service.inference.settings import DEFAULT_VLM_MODEL, InferenceSettings, VlmSettings


def local_options(settings: VlmSettings, inference: InferenceSettings | None = None):
    """The local provider's options: VLM_*, with DEVICE and HALF from the detector's settings where
    VLM_DEVICE is unset (the web floor's Settings is both)."""
    from rtdetr_service.inference.vlm.local import LocalOptions

    inference = inference or (settings if isinstance(settings, InferenceSettings) else InferenceSettings())
    return LocalOptions(
        model=settings.resolved_vlm_model(),
        setting=settings.vlm_model,
        is_default=Path(settings.vlm_model).name == Path(DEFAULT_VLM_MODEL).name,
        device=settings.vlm_device or inference.device,
        half=inference.half,
        max_tokens=settings.vlm_max_tokens,
        answer_max_chars=settings.vlm_answer_max_chars,
        prompt_max_chars=settings.vlm_prompt_max_chars,
        image_max_px=settings.vlm_image_max_px,
        images_max=settings.vlm_images_max,
        batch=settings.vlm_batch,
        threads=settings.vlm_threads,
        timeout_s=settings.vlm_timeout_s,
    )


def load_vlm(settings: VlmSettings, inference: InferenceSettings | None = None) -> VisionLanguageModel | None:
    """The provider VLM_PROVIDER names, ready to answer; None when it is off.

    Blocking (a local model loads and answers one warm-up request): call it off the event loop. A
    local VLM_MODEL without weights raises `ModelLoadError` saying which `make models` fetches them.
    """
    if settings.vlm_provider == "off":
        return None
    if settings.vlm_provider == "transformers":
        from rtdetr_service.inference.vlm.local import load_local_vlm

        return load_local_vlm(local_options(settings, inference))
    if settings.vlm_provider == "openai":
        from rtdetr_service.inference.vlm.openai import OpenAiVlm

        return OpenAiVlm(settings)
    raise ValueError(f"VLM_PROVIDER={settings.vlm_provider!r} is not off, openai or transformers")
