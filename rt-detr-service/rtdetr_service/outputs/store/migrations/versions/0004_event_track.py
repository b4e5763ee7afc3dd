"""Event tracks: the event_points table (an object's boxes over its life) and, on events, the rate its
points are kept at and whether they were thinned.

Frozen: this file spells out its table and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_points",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("t", sa.Double, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("x1", sa.Double, nullable=False),
        sa.Column("y1", sa.Double, nullable=False),
        sa.Column("x2", sa.Double, nullable=False),
        sa.Column("y2", sa.Double, nullable=False),
        sa.Column("confidence", sa.Double, nullable=False),
        sa.Column("zones", sa.Text, nullable=False),
    )
    # Events from before have no track: rate 0, nothing thinned.
    op.add_column("events", sa.Column("track_hz", sa.Double, nullable=False, server_default="0"))
    op.add_column("events", sa.Column("track_truncated", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("events", "track_truncated")
    op.drop_column("events", "track_hz")
    op.drop_table("event_points")
