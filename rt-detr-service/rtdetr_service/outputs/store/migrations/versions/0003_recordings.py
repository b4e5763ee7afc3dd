"""Recording segments: one row per MP4 file of a camera's packets, with its wall-clock span.

Frozen: this file spells out its table and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("camera", sa.String(), nullable=True),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("start_time", sa.Double, nullable=False),
        sa.Column("end_time", sa.Double, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("codec", sa.String(32), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False, server_default="events"),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    # Export lists a camera's segments by time; retention and clips read a session's.
    op.create_index("ix_recordings_camera_start_time", "recordings", ["camera", "start_time"])
    op.create_index("ix_recordings_session_id_start_time", "recordings", ["session_id", "start_time"])


def downgrade() -> None:
    op.drop_table("recordings")
