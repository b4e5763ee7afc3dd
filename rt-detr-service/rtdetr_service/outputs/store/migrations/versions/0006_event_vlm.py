"""What a vision-language model says about events: on events their description, the model that wrote
it and the answers to the questions their rules asked (JSON list); and the description's text vector,
one per event, in a table shaped like event_embeddings, so a search by words ranks events by what
was seen and by what was said about them.

Frozen: this file spells out its table and never imports schema.py.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, nullable: no copy of the events table on SQLite, events from before say nothing.
    op.add_column("events", sa.Column("description", sa.Text, nullable=True))
    op.add_column("events", sa.Column("description_model", sa.String(200), nullable=True))
    op.add_column("events", sa.Column("answers", sa.Text, nullable=True))  # JSON list of RuleAnswer.as_data()
    op.create_table(
        "event_text_embeddings",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary().with_variant(postgresql.ARRAY(sa.REAL), "postgresql"), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("ix_event_text_embeddings_model_id", "event_text_embeddings", ["model_id", "event_id"])


def downgrade() -> None:
    op.drop_table("event_text_embeddings")
    with op.batch_alter_table("events") as batch:  # SQLite 3.40 drops a column by copying the table
        batch.drop_column("answers")
        batch.drop_column("description_model")
        batch.drop_column("description")
