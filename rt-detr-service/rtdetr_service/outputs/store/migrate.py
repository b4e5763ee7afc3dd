"""Bringing a database's schema to the one this version reads, with Alembic, when the store opens.

An empty database is upgraded to the head revision; one made by `create_all` before migrations
existed (tables, no `alembic_version`) is stamped 0001 and upgraded in place; one at a revision
this version does not know was made by a newer version, and is refused. On PostgreSQL the whole
check-and-upgrade runs under a transaction-scoped advisory lock, so replicas starting at once
take turns: the first upgrades, the others find the head and go on.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from rtdetr_service.outputs.store.schema import Database

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema `create_all` made before there were migrations
_BASELINE_TABLES = {"events", "event_zones"}
# pg_advisory_xact_lock takes a bigint: a fixed number derived from a name, the same in every replica.
LOCK_KEY = zlib.crc32(b"rtdetr_service schema migrations")


class NewerSchema(RuntimeError):
    """The database was made by a newer version of the service than this one."""


@dataclass(frozen=True)
class Upgrade:
    """What opening did to the schema: the revision found (None: empty, or made before migrations) and the
    one left; `stamped` when a database made before migrations was adopted as the baseline."""

    before: str | None
    after: str
    stamped: bool


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration without an alembic.ini: the migrations shipped in the package, run on
    `connection` (env.py picks it up) when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this version knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(db: Database) -> Upgrade:
    """Bring `db` to the head revision (see the module docstring). Raises NewerSchema, in words, for a
    database at a revision this version does not know, and SQLAlchemy's errors when it cannot reach it."""
    with db.write_transaction() as conn:
        if db.backend == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOCK_KEY)))
        config = alembic_config(conn)
        script = ScriptDirectory.from_config(config)
        target = script.get_current_head()
        current = MigrationContext.configure(conn).get_current_heads()
        known = {revision.revision for revision in script.walk_revisions()}
        unknown = [revision for revision in current if revision not in known]
        if unknown:
            raise NewerSchema(
                f"the database at {db.safe_url} was made by a newer version of the service (schema revision "
                f"{', '.join(unknown)}; this version knows up to {target}): run that version or a newer one, "
                "or give this one a database of its own"
            )
        found = current[0] if current else None
        stamped = False
        if found is None:
            tables = set(sa.inspect(conn).get_table_names())
            if tables & _BASELINE_TABLES:
                _check_baseline(db, tables)
                command.stamp(config, BASELINE)
                stamped = True
        if found != target:
            command.upgrade(config, "head")
    if found != target:
        was = "a schema made before migrations (adopted as 0001)" if stamped else found or "an empty database"
        log.info("event store: schema upgraded from %s to %s", was, target)
    return Upgrade(found, target, stamped)


def _check_baseline(db: Database, tables: set[str]) -> None:
    missing = _BASELINE_TABLES - tables
    if missing:
        raise RuntimeError(
            f"the database at {db.safe_url} has some of the event store's tables but not "
            f"{', '.join(sorted(missing))}, and no schema revision: it was not made by this service"
        )
