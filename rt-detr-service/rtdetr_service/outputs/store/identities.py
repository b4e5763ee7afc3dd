"""Re-ID's decisions, kept in the events table the moment they are made, one at a time per label.

An ended event's global_id depends on the decisions made before it: Re-ID links it to an earlier
look only if that look has one. Two replicas that end look-alikes at the same instant would each
search, each find the other undecided, and each mint an identity: one object, two ids. So a
decision is made inside `deciding(label)`: on PostgreSQL a transaction holding an advisory lock
for the label (every replica takes the same one), in which the search runs and the global_id is
written; the lock goes with the commit, so the next decider of that label, on any replica, sees
it. Labels decide in parallel. On SQLite there is one replica (the embedded default), whose
embedding thread decides one event at a time already; the write is immediate all the same, so
what the process remembers is what the store says.

The write keeps an identity an event already has (decided earlier, by whichever replica ended it
first): the answer is the stored one.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Callable, Iterator

import sqlalchemy as sa

from rtdetr_service.outputs.store.schema import Database, events_table

# pg_advisory_xact_lock(int, int): a namespace of our own, then the label's. crc32 is unsigned;
# the function takes signed 32-bit keys.
_NAMESPACE = zlib.crc32(b"rtdetr_service re-id") - 2**31
LOCK_TIMEOUT_S = 10  # a decider that waits longer fails its event, counted and said (a stuck replica)

# keep(event_id, global_id) -> the event's global_id as stored now (None: the event is not stored).
Keep = Callable[[str, str], "str | None"]


def label_key(label: str) -> int:
    """The label's advisory lock key: the same in every replica."""
    return zlib.crc32(label.encode("utf-8", "surrogatepass")) - 2**31


class Decisions:
    """See the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.contextmanager
    def deciding(self, label: str) -> Iterator[Keep]:
        """A decision for an event of `label`: searches made inside see every decision made before
        it, and `keep` writes this one, visible to the next once the block ends."""
        with self._db.engine.begin() as conn:
            if self._db.backend == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_NAMESPACE, label_key(label))))

            def keep(event_id: str, global_id: str) -> str | None:
                t = events_table
                conn.execute(
                    sa.update(t).where(t.c.id == event_id, t.c.global_id.is_(None)).values(global_id=global_id)
                )
                return conn.execute(sa.select(t.c.global_id).where(t.c.id == event_id)).scalar_one_or_none()

            yield keep
