"""Alembic's environment for the store's migrations.

The service runs them on the connection migrate.py hands over (`config.attributes["connection"]`).
A developer may also run the `alembic` command from the repository root (alembic.ini there) on
`-x url=…` or DATABASE_URL; `--sql` prints the SQL instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa
from alembic import context

from rtdetr_service.outputs.store.schema import Database, metadata, shipped_driver


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it; batch mode writes migrations that way.
        render_as_batch=connection.dialect.name == "sqlite",
        # Database.write_transaction began a real transaction on SQLite too (BEGIN IMMEDIATE).
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _developer_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("which database? alembic -x url=sqlite:///data/events.db …, or set DATABASE_URL")
    return url


def run(config) -> None:
    """Run the migrations Alembic asked for, on the handed-over connection or the developer's URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    elif context.is_offline_mode():
        context.configure(url=shipped_driver(sa.engine.make_url(_developer_url())), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        db = Database(_developer_url(), Path("."), busy_timeout_s=5.0)
        try:
            with db.write_transaction() as conn:
                _configure(conn)
        finally:
            db.dispose()


# Alembic runs this file with `context.config` set; imported any other way (a check that imports
# every module of the package) there is nothing to run.
if hasattr(context, "config"):
    run(context.config)
