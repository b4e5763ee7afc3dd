"""Sessions as desired state in the shared store: the rows every replica reads, and the lease one
replica holds on each, judged by the database's clock and fenced by an epoch.

A replica `claim`s the sessions that want to run and that no one holds (or whose holder's lease ran
out), `renew`s its leases every lease/3 and learns there which it lost, which were asked to stop and
which have new options. Each claim moves the session's epoch on; every write the owner makes about a
session carries the epoch of its claim (`set_state` here, `fence` inside the event writer's
transaction), so a paused or partitioned old owner whose session was taken writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import sqlalchemy as sa

from rtdetr_service.outputs.store.schema import SESSION_STATES, Database, sessions_table

_T = sessions_table
_DESIRED = ("run", "stop")
_ID_CHARS = 36


class UnknownSession(LookupError):
    """No session with that id is recorded."""


@dataclass(frozen=True)
class SessionRecord:
    """One sessions row. `options` holds the stream URL as given, so neither it nor the viewer token
    is in the repr; times are Unix seconds by the database's clock."""

    id: str
    options: dict = field(repr=False)
    viewer_token: str = field(repr=False)
    desired: str = "run"
    state: str = "pending"
    options_rev: int = 1
    owner: str | None = None
    lease_until: float | None = None
    epoch: int = 0
    last_error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    lease_expired: bool = False  # an owner is named but its lease ran out (by the database's clock)

    @property
    def shown_state(self) -> str:
        """The state to show: `moving` while a wanted session's owner has stopped renewing (it died, or
        cannot reach the store) and no replica has claimed it yet; the recorded state otherwise."""
        if self.desired == "run" and self.owner is not None and self.lease_expired:
            return "moving"
        return self.state


@dataclass(frozen=True)
class Claimed:
    """A session this replica now owns: the row as claimed (new owner, lease, epoch and state), and
    who held it before (None when no replica ever had, or its last owner released it)."""

    record: SessionRecord
    previous_owner: str | None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def epoch(self) -> int:
        return self.record.epoch


@dataclass(frozen=True)
class Renewal:
    """What a renewal found: the leases extended (to `lease_until`), those lost with why in words, the
    renewed sessions now asked to stop, and every renewed session's options revision."""

    lease_until: float | None
    renewed: frozenset[str]
    lost: dict[str, str]
    stop: frozenset[str]
    options_rev: dict[str, int]

    def changed(self, applied: Mapping[str, int]) -> set[str]:
        """The renewed sessions whose options are newer than the revision the owner applied."""
        return {sid for sid, rev in self.options_rev.items() if rev > applied.get(sid, 0)}


class SessionRecords:
    """The sessions table of the store's database (already at the head revision: migrate.upgrade)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def shared(self) -> bool:
        """Whether other replicas can share these records (PostgreSQL), not only this one (SQLite)."""
        return self._db.backend != "sqlite"

    def now(self) -> float:
        """The database's clock, in Unix seconds: the one every lease is judged by."""
        with self._db.engine.connect() as conn:
            return self._now(conn)

    def _now(self, conn: sa.Connection) -> float:
        return float(conn.scalar(sa.select(self._db.now())))

    # -- rows ---------------------------------------------------------------------------------

    def add(self, record: SessionRecord, owner: str | None = None, lease_s: float | None = None) -> SessionRecord:
        """Record a new session (its id, options, viewer token, desired state and state); the store sets
        the rest. With `owner`, it is recorded as that replica's already (a start that opened the stream
        there): a lease of `lease_s` and epoch 1. ValueError, in words, for a bad value or an id already
        recorded."""
        if owner is not None:
            _check_lease(lease_s)
        if not record.id or len(record.id) > _ID_CHARS:
            raise ValueError(f"a session id is 1 to {_ID_CHARS} characters, got {len(record.id)}")
        _check(record.desired, _DESIRED, "desired")
        _check(record.state, SESSION_STATES, "state")
        options = json.dumps(record.options)
        try:
            with self._db.engine.begin() as conn:
                now = self._now(conn)
                conn.execute(
                    sa.insert(_T).values(
                        id=record.id,
                        options=options,
                        viewer_token=record.viewer_token,
                        desired=record.desired,
                        state=record.state,
                        created_at=now,
                        updated_at=now,
                        **({"owner": owner, "lease_until": now + lease_s, "epoch": 1} if owner is not None else {}),
                    )
                )
        except sa.exc.IntegrityError:
            raise ValueError(f"a session with id {record.id} is already recorded") from None
        return self.get(record.id)

    def get(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        with self._db.engine.connect() as conn:
            row = conn.execute(self._rows().where(_T.c.id == session_id)).mappings().first()
        return _record(row) if row is not None else None

    def _rows(self) -> sa.Select:
        """Every column, and whether the owner's lease ran out by the database's clock."""
        expired = sa.and_(_T.c.lease_until.is_not(None), _T.c.lease_until < self._db.now())
        return sa.select(_T, expired.label("lease_expired"))

    def list(self) -> list[SessionRecord]:
        """Every recorded session, oldest first."""
        return self._select(sa.true())

    def owned_by(self, replica: str) -> list[SessionRecord]:
        """The sessions `replica` owns now (its lease may have run out without anyone taking them)."""
        return self._select(_T.c.owner == replica)

    def pending_count(self) -> int:
        """How many sessions want to run and have no live owner: what the replicas' capacity lacks."""
        with self._db.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(_T).where(_claimable(self._db.now()))))

    def _select(self, where: sa.ColumnElement[bool]) -> list[SessionRecord]:
        with self._db.engine.connect() as conn:
            rows = conn.execute(self._rows().where(where).order_by(_T.c.created_at, _T.c.id)).mappings()
            return [_record(row) for row in rows]

    # -- ownership ----------------------------------------------------------------------------

    def claim(self, replica: str, capacity: int, lease_s: float, *, expired: bool = True) -> list[Claimed]:
        """Take up to `capacity` sessions that want to run and have no live owner, oldest first: each gets
        this replica as owner, a lease of `lease_s`, the next epoch, and state `opening` (`moving` when
        some replica had it before). Concurrent claimers never take the same session. Without `expired`,
        only sessions with no owner at all are taken, not those whose owner's lease ran out."""
        _check_lease(lease_s)
        if capacity <= 0:
            return []
        with self._db.write_transaction() as conn:
            now = self._now(conn)
            # FOR UPDATE SKIP LOCKED on PostgreSQL: a concurrent claimer passes over these rows and takes
            # others. SQLite has no row locks (SQLAlchemy leaves the clause out): BEGIN IMMEDIATE serialises.
            query = (
                sa.select(_T)
                .where(_claimable(now) if expired else sa.and_(_T.c.desired == "run", _T.c.owner.is_(None)))
                .order_by(_T.c.created_at, _T.c.id)
                .limit(capacity)
                .with_for_update(skip_locked=True)
            )
            rows = conn.execute(query).mappings().all()
            claimed = []
            for row in rows:
                values = {
                    "owner": replica,
                    "lease_until": now + lease_s,
                    "epoch": row["epoch"] + 1,
                    "state": "moving" if row["epoch"] > 0 else "opening",
                    "updated_at": now,
                }
                conn.execute(sa.update(_T).where(_T.c.id == row["id"]).values(**values))
                claimed.append(Claimed(_record({**row, **values}), row["owner"]))
        return claimed

    def renew(self, replica: str, held: Mapping[str, int], lease_s: float) -> Renewal:
        """Extend the leases of the sessions in `held` ({id: epoch of our claim}) that are still ours at
        that epoch. A lease that ran out is still extended if no one took the session meanwhile: the
        epoch has not moved, so nobody else has written for it."""
        _check_lease(lease_s)
        if not held:
            return Renewal(None, frozenset(), {}, frozenset(), {})
        with self._db.write_transaction() as conn:
            now = self._now(conn)
            query = sa.select(_T.c.id, _T.c.owner, _T.c.epoch, _T.c.desired, _T.c.options_rev)
            rows = {row.id: row for row in conn.execute(query.where(_T.c.id.in_(list(held))).with_for_update())}
            lost = {sid: why for sid, epoch in held.items() if (why := _lost(rows.get(sid), replica, epoch))}
            ours = [sid for sid in held if sid not in lost]
            until = now + lease_s
            if ours:
                conn.execute(sa.update(_T).where(_T.c.id.in_(ours)).values(lease_until=until))
        return Renewal(
            until if ours else None,
            frozenset(ours),
            lost,
            frozenset(sid for sid in ours if rows[sid].desired == "stop"),
            {sid: rows[sid].options_rev for sid in ours},
        )

    def release(self, replica: str, ids: Iterable[str]) -> int:
        """Give up these sessions (those `replica` owns): no owner and no lease, so another replica claims
        them at once; those still wanted are `moving`. Returns how many were released."""
        ids = list(ids)
        if not ids:
            return 0
        with self._db.engine.begin() as conn:
            now = self._now(conn)
            moving = sa.case((_T.c.desired == "run", "moving"), else_=_T.c.state)
            done = conn.execute(
                sa.update(_T)
                .where(_T.c.id.in_(ids), _T.c.owner == replica)
                .values(owner=None, lease_until=None, state=moving, updated_at=now)
            )
        return done.rowcount

    def set_state(self, session_id: str, replica: str, epoch: int, state: str, last_error: str | None = None) -> bool:
        """Record the session's state and last error, only as its owner at `epoch`; False otherwise
        (the session was taken, released or removed: the caller no longer owns it)."""
        _check(state, SESSION_STATES, "state")
        with self._db.engine.begin() as conn:
            done = conn.execute(
                sa.update(_T)
                .where(_T.c.id == session_id, _T.c.owner == replica, _T.c.epoch == epoch)
                .values(state=state, last_error=last_error, updated_at=self._db.now())
            )
        return done.rowcount == 1

    # -- control, from any replica ------------------------------------------------------------

    def update_options(self, session_id: str, options: dict) -> int:
        """Replace the session's options; returns the new revision, which the owner sees at its next renewal."""
        text = json.dumps(options)
        with self._db.engine.begin() as conn:
            rev = conn.scalar(
                sa.update(_T)
                .where(_T.c.id == session_id)
                .values(options=text, options_rev=_T.c.options_rev + 1, updated_at=self._db.now())
                .returning(_T.c.options_rev)
            )
        if rev is None:
            raise UnknownSession(f"no session {session_id} is recorded")
        return int(rev)

    def request_stop(self, session_id: str) -> bool:
        """Ask for the session to stop: its owner sees it at its next renewal. One with no live owner is
        `stopped` at once and unowned. False if there is no such session."""
        with self._db.write_transaction() as conn:
            now = self._now(conn)
            orphan = sa.or_(_T.c.owner.is_(None), _T.c.lease_until < now)
            done = conn.execute(
                sa.update(_T)
                .where(_T.c.id == session_id)
                .values(
                    desired="stop",
                    state=sa.case((orphan, "stopped"), else_=_T.c.state),
                    owner=sa.case((orphan, None), else_=_T.c.owner),
                    lease_until=sa.case((orphan, None), else_=_T.c.lease_until),
                    updated_at=now,
                )
            )
        return done.rowcount == 1

    def fence(self, conn: sa.Connection, pairs: Iterable[tuple[str, int]]) -> set[str]:
        """Inside the caller's transaction: the ids of the (session id, epoch) pairs whose epoch is still
        the session's, i.e. no one has claimed it since. On PostgreSQL the rows stay locked FOR SHARE until
        that transaction ends, so no claim can move the epoch before its writes commit; on SQLite the
        caller's transaction should be a write transaction (Database.write_transaction)."""
        pairs = set(pairs)
        if not pairs:
            return set()
        query = sa.select(_T.c.id, _T.c.epoch).where(_T.c.id.in_({sid for sid, _ in pairs}))
        if self._db.backend == "postgresql":
            query = query.with_for_update(read=True)
        return {row.id for row in conn.execute(query) if (row.id, row.epoch) in pairs}

    def delete_stopped(self, older_than_days: float) -> int:
        """Retention: delete the sessions asked to stop, with no live owner, unchanged for `older_than_days`."""
        if older_than_days <= 0:
            raise ValueError(f"older_than_days must be > 0, got {older_than_days}")
        with self._db.engine.begin() as conn:
            now = self._now(conn)
            done = conn.execute(
                sa.delete(_T).where(
                    _T.c.desired == "stop",
                    sa.or_(_T.c.owner.is_(None), _T.c.lease_until < now),
                    _T.c.updated_at < now - older_than_days * 86400.0,
                )
            )
        return done.rowcount


def _claimable(now) -> sa.ColumnElement[bool]:
    return sa.and_(_T.c.desired == "run", sa.or_(_T.c.owner.is_(None), _T.c.lease_until < now))


def _lost(row, replica: str, epoch: int) -> str | None:
    """Why a held session is no longer ours, in words; None while it is."""
    if row is None:
        return "the session is no longer recorded"
    if row.epoch != epoch:
        return f"claimed again (epoch {row.epoch}) by {row.owner or 'a replica that since released it'}"
    if row.owner != replica:
        return "released" if row.owner is None else f"owned by {row.owner}"
    return None


def _record(row: Mapping) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        options=json.loads(row["options"]),
        viewer_token=row["viewer_token"],
        desired=row["desired"],
        state=row["state"],
        options_rev=row["options_rev"],
        owner=row["owner"],
        lease_until=row["lease_until"],
        epoch=row["epoch"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        lease_expired=bool(row.get("lease_expired", False)),
    )


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


def _check_lease(lease_s: float | None) -> None:
    if lease_s is None or not lease_s > 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s}")
