"""Event embeddings: one appearance vector per event, with the model that made it, and on events the
cross-camera identity Re-ID gives them (`global_id`).

The vector column is untyped, so no extension is needed to migrate: raw float32 bytes on SQLite
(sqlite-vec reads them at search time), real[] on PostgreSQL (the vector index makes a pgvector HNSW
index per model, cast to that model's vector(dim), when pgvector is there).

Frozen: this file spells out its table and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_embeddings",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary().with_variant(postgresql.ARRAY(sa.REAL), "postgresql"), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    # Searches and counts are per model; a reindex looks up which events a model has not embedded.
    op.create_index("ix_event_embeddings_model_id", "event_embeddings", ["model_id", "event_id"])
    # Events from before have no identity. A plain ADD COLUMN: no copy of the events table on SQLite.
    op.add_column("events", sa.Column("global_id", sa.String(64), nullable=True))
    op.create_index("ix_events_global_id", "events", ["global_id"])


def downgrade() -> None:
    op.drop_index("ix_events_global_id", "events")
    with op.batch_alter_table("events") as batch:  # SQLite 3.40 drops a column by copying the table
        batch.drop_column("global_id")
    op.drop_table("event_embeddings")
