"""RECORD_*: whether sessions record by default, how segments are cut, and how long they are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rtdetr_service.core.config import SettingsModel

RecordMode = Literal["off", "events", "continuous"]
RECORD_MODES: tuple[str, ...] = ("off", "events", "continuous")


class RecordingSettings(SettingsModel):
    """How sessions record their camera's video; environment variables use the upper-case field names."""

    record: RecordMode = Field(
        "events",
        description="What a session records when its start call says nothing: off, events (keep only "
        "segments around events), continuous (keep everything). Needs the event store.",
    )
    record_segment_s: float = Field(
        10.0, ge=0.5, le=600, description="A segment is closed at the first keyframe after this many seconds."
    )
    record_segment_max_s: float = Field(
        30.0,
        ge=1.0,
        le=3600,
        description="A camera that sends no keyframe this long: the segment is closed here, and the next one "
        "starts at the next keyframe (what comes between is not recorded).",
    )
    record_queue_s: float = Field(
        5.0,
        ge=0.5,
        le=120,
        description="Seconds of packets waiting for the disk per session; beyond it packets are dropped up to "
        "the next keyframe, counted.",
    )
    record_pre_s: float = Field(5.0, ge=0, le=300, description="Video kept before an event starts (events mode).")
    record_post_s: float = Field(5.0, ge=0, le=300, description="Video kept after an event ends (events mode).")
    record_retain_days: float = Field(
        7.0, gt=0, le=3650, description="Segments that overlap no event are deleted after this many days."
    )
    record_events_retain_days: float = Field(
        30.0, gt=0, le=3650, description="Segments that overlap an event are deleted after this many days."
    )
    record_max_gb: float = Field(
        100.0, gt=0, le=1_000_000, description="Recordings beyond this total (GB) are deleted, oldest first."
    )
    record_export_max_s: float = Field(
        3600.0,
        ge=1,
        le=86400,
        description="The longest time range one export (GET /api/v1/recordings/export.mp4) may ask for.",
    )
    record_clips_max: int = Field(
        4,
        ge=1,
        le=64,
        description="Clips and exports being streamed at once (each reads files and muxes on a thread); "
        "one more is refused with 429 too_many_clips.",
    )
    record_sweep_s: float = Field(
        10.0, ge=0.1, le=3600, description="How often unneeded and expired segments are looked for and deleted."
    )

    @model_validator(mode="after")
    def _bounds_are_ordered(self) -> RecordingSettings:
        if self.record_segment_max_s < self.record_segment_s:
            raise ValueError("RECORD_SEGMENT_MAX_S must be >= RECORD_SEGMENT_S")
        return self
