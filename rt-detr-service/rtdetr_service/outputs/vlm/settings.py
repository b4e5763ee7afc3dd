"""VLM_QUEUE_SIZE, VLM_WORKERS, VLM_DESCRIBE_FRAMES, VLM_DESCRIBE_DEFAULT_PROMPT, VLM_DESCRIBE_CONTEXT: how the
VLM stage queues and sends its questions, and what a description asks. The model itself and the bounds on
every call (VLM_IMAGE_MAX_PX, VLM_ANSWER_MAX_CHARS, ...) are the inference floor's VLM settings."""

from __future__ import annotations

from pydantic import Field, field_validator

from rtdetr_service.core.config import SettingsModel
from rtdetr_service.core.vlm import DESCRIBE_PROMPT_MAX_CHARS

DEFAULT_PROMPT = (
    "Describe the object in the first picture in one or two plain sentences: what it is, what it looks like "
    "(colours, clothing or make, anything carried) and what it is doing. The other pictures are the same "
    "object at other moments. Say only what you can see."
)


class VlmStageSettings(SettingsModel):
    """The VLM stage (outputs/vlm/); environment variables use the upper-case field names."""

    vlm_queue_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Descriptions and rule questions waiting for the vision-language model (fair between "
        "sessions); beyond it the oldest of the busiest session is dropped, counted.",
    )
    vlm_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Most requests the VLM stage has in flight at once (handed to the model as one batch).",
    )
    vlm_describe_frames: int = Field(
        3,
        ge=1,
        le=16,
        description="Pictures of an event sent with its description request: its best view and up to this "
        "many less one more, spread over its life (at most VLM_IMAGES_MAX).",
    )
    vlm_describe_context: float = Field(
        0.25,
        ge=0.0,
        le=2.0,
        description="How much of the box's size is added around it on each side in a description's pictures "
        "(what the object stands in and carries).",
    )
    vlm_describe_default_prompt: str = Field(
        DEFAULT_PROMPT,
        min_length=1,
        max_length=DESCRIBE_PROMPT_MAX_CHARS,
        description="What a description asks when the session's `describe.prompt` does not say.",
    )

    @field_validator("vlm_describe_default_prompt")
    @classmethod
    def _plain_words(cls, value: str) -> str:
        value = value.strip()
        if not value or not all(c.isprintable() or c in "\n\t" for c in value):
            raise ValueError("VLM_DESCRIBE_DEFAULT_PROMPT: words without control characters")
        return value
