"""What sessions and their manager read: limits, per-session defaults, and the stream settings."""

from __future__ import annotations

from pydantic import Field

from rtdetr_service.ingest.settings import StreamSettings


class SessionSettings(StreamSettings):
    """How many sessions, and what a start call gets when it says nothing; upper-case in the environment."""

    max_sessions: int = Field(16, ge=1, le=256, description="Concurrent sessions; more is refused with 429.")
    max_opens: int = Field(
        8, ge=1, le=256, description="Streams opened at once (start calls waiting on a camera); more get 429."
    )
    default_confidence: float = Field(
        0.5, ge=0.0, le=1.0, description="Detection threshold when a start call sets none."
    )
    jpeg_quality: int = Field(75, ge=1, le=100, description="Default JPEG quality of annotated frames.")
    track_min_hits: int = Field(2, ge=2, le=30, description="Default frames a track needs before it gets an id.")
    track_keep_s: float = Field(
        1.0, ge=0.0, le=60.0, description="Default time a lost track is kept, by frame timestamps."
    )
    track_iou: float = Field(0.1, ge=0.01, le=0.99, description="Default least IoU to match a box to a track.")
    event_end_after_s: float = Field(
        5.0, ge=0.5, le=600.0, description="An object unseen this long has left: its event ends."
    )
