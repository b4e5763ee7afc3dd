"""The event store as `create_all` made it before there were migrations: events and their zones.

A database made then is stamped with this revision when it is first opened, not re-created. Frozen:
this file spells out its tables and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("camera", sa.String(), nullable=True),
        sa.Column("track_id", sa.Integer, nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("class_id", sa.Integer, nullable=False),
        sa.Column("start_time", sa.Double, nullable=False),
        sa.Column("end_time", sa.Double, nullable=True),
        sa.Column("last_seen", sa.Double, nullable=False),
        sa.Column("best_confidence", sa.Double, nullable=False),
        sa.Column("best_bbox", sa.Text, nullable=False),
        sa.Column("best_time", sa.Double, nullable=False),
        sa.Column("frame_width", sa.Integer, nullable=False),
        sa.Column("frame_height", sa.Integer, nullable=False),
        sa.Column("zones", sa.Text, nullable=False),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("snapshot_path", sa.String(), nullable=True),
        sa.Column("snapshot_bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_index("ix_events_start_time", "events", ["start_time"])
    op.create_index("ix_events_camera_start_time", "events", ["camera", "start_time"])
    op.create_index("ix_events_label_start_time", "events", ["label", "start_time"])
    op.create_index("ix_events_session_id", "events", ["session_id"])
    op.create_table(
        "event_zones",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("zone", sa.String(), primary_key=True),
    )
    op.create_index("ix_event_zones_zone", "event_zones", ["zone", "event_id"])


def downgrade() -> None:
    op.drop_table("event_zones")
    op.drop_table("events")
