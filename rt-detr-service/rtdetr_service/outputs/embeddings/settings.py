"""EMBED_*, REID_*, REINDEX_* and OUTPUT_EMBEDDINGS: what the embedding stage keeps of each event, how it
queues and batches, how Re-ID links one object's looks across cameras, and how a reindex embeds stored
events. The encoder itself (EMBED_MODEL) is the inference floor's; the vectors' index is the event store's."""

from __future__ import annotations

from pydantic import Field

from rtdetr_service.core.config import SettingsModel


class EmbeddingSettings(SettingsModel):
    """The embedding stage and Re-ID; environment variables use the upper-case field names."""

    embed_crops_per_event: int = Field(
        2,
        ge=0,
        le=16,
        description="Crops kept per event besides its best view, spread over its life; its vector is the "
        "normalised mean of all of them (each one more costs one more encoder pass per event).",
    )
    embed_crops_max_mb: float = Field(
        32.0,
        gt=0,
        le=4096,
        description="Memory the crops of one session's live events may hold (MB). Past it their lives keep their "
        "best view only, no more crops over the life; each crop not kept is counted (`crops_shed`).",
    )
    embed_early_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="An event that has lived this long is embedded once while still live (so it can be found "
        "before it ends), and again at its end.",
    )
    embed_crop_px: int = Field(
        224,
        ge=32,
        le=1024,
        description="Crops are shrunk to at most this many pixels on their longest side before they are kept "
        "(the encoder's input size: a larger crop costs memory and nothing else).",
    )
    embed_queue_size: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Embedding requests waiting for the encoder (fair between sessions); beyond it the oldest of "
        "the busiest session is dropped, counted.",
    )
    reid_threshold: float = Field(
        0.8,
        ge=-1.0,
        le=1.0,
        description="Cosine similarity from which an ended event is the same object as an earlier one of the "
        "same class; higher links less and splits more.",
    )
    reid_window_s: float = Field(
        600.0,
        gt=0,
        le=7 * 86400,
        description="How long before an event's start an earlier look of the same object may have started to be "
        "linked to it.",
    )
    output_embeddings: bool = Field(
        False,
        description="Webhook, MQTT and Kafka event messages carry the appearance vector (768 floats for a base "
        "model) on the update that brings an ended event's global_id.",
    )
    reindex_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="Stored events a reindex embeds per encoder pass (read from their snapshots, oldest first).",
    )
    reindex_duty: float = Field(
        0.5,
        gt=0,
        le=1.0,
        description="The share of one reindex thread's time spent working: after each batch it sleeps in "
        "proportion (0.5: as long as the batch took), so a reindex never takes the CPU from live cameras.",
    )
