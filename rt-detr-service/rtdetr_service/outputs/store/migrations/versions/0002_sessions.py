"""Sessions as desired state shared by every replica: options, owner, lease (by the database's clock)
and the epoch that fences the owner's writes.

Frozen: this file spells out its table and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STATES = "'pending', 'opening', 'running', 'reconnecting', 'moving', 'stopped', 'failed'"


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("options_rev", sa.Integer, nullable=False, server_default="1"),
        sa.Column("viewer_token", sa.Text, nullable=False),
        sa.Column("desired", sa.String(8), nullable=False, server_default="run"),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.CheckConstraint("desired IN ('run', 'stop')", name="ck_sessions_desired"),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_sessions_state"),
    )
    # The claim reads the sessions to run oldest first; renew and owned_by read one replica's.
    op.create_index("ix_sessions_claim", "sessions", ["desired", "created_at"])
    op.create_index("ix_sessions_owner", "sessions", ["owner"])


def downgrade() -> None:
    op.drop_table("sessions")
