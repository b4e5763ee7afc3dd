"""This replica's part in the sessions recorded in the shared store: what it runs, by lease.

Every session started here is recorded (sessions/records.py) with this replica as its owner. A
thread renews the leases every SESSION_LEASE_S/3 and hears there which sessions were taken by
another replica (stopped here at once: the new owner runs them), which were asked to stop from
another replica, and which got new zones. Every second, with places free under MAX_SESSIONS, it claims the
sessions no live replica owns (a dead replica's, a drained one's, those recorded `pending`, and
at start those this replica ran before it restarted) and runs them again with the same id and
viewer token. A session that cannot be opened again keeps its lease and is retried with a
growing delay, its state `reconnecting` and the reason in words.

The database being unreachable stops nothing: nobody can claim a session meanwhile, and a lease
whose epoch has not moved is renewed once the database is back (records.renew). Every lease ran
out during the outage, so a replica back from one takes no expired lease for SESSION_LEASE_S: the
owners, renewing every lease/3, keep their sessions instead of racing the claimers for them (no
camera moves because of an outage all replicas saw). A replica that only it cannot reach, while
others can, loses its sessions to them when its leases run out, and on its next renewal learns so
and stops its copies.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from typing import TYPE_CHECKING

from rtdetr_service.ingest.urls import redact_url
from rtdetr_service.outputs import messages
from rtdetr_service.outputs.store.schema import words
from rtdetr_service.sessions.desired import options_from_record, options_to_record, record_mode
from rtdetr_service.sessions.records import Claimed, SessionRecord, SessionRecords
from rtdetr_service.sessions.session import Session, SessionError, SessionOptions, SessionState

if TYPE_CHECKING:
    from rtdetr_service.sessions.manager import SessionManager

log = logging.getLogger(__name__)

_RETRY_S = (2.0, 4.0, 8.0, 15.0, 30.0)  # between attempts to open a claimed session again
_EPOCHS_KEPT = 10_000
CLAIM_EVERY_S = 1.0  # a drained or pending session waits at most this long for a replica with room
_STORE_STATES = {
    SessionState.STARTING: "opening",
    SessionState.RUNNING: "running",
    SessionState.RECONNECTING: "reconnecting",
    SessionState.FAILED: "failed",
    SessionState.STOPPED: "stopped",
}


class _Held:
    """A session this replica owns: its claim's epoch, the options revision it runs, and, while it
    is being opened again, its attempts so far and when the next is due (monotonic)."""

    __slots__ = ("epoch", "rev", "adopted", "attempts", "next_at", "written", "opening")

    def __init__(self, epoch: int, rev: int, adopted: bool = False) -> None:
        self.epoch = epoch
        self.rev = rev
        self.adopted = adopted  # claimed from the store (opened again here), not started here
        self.attempts = 0
        self.next_at = 0.0
        self.written: tuple[str, str | None] | None = None  # the state and error last recorded
        self.opening = False


class Cluster:
    """Records, renews, claims and releases this replica's sessions; see the module docstring."""

    def __init__(
        self,
        records: SessionRecords,
        manager: SessionManager,
        *,
        replica: str,
        lease_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.records = records
        self.replica = replica
        self.lease_s = lease_s
        self._manager = manager
        self._loop = loop
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = False
        self._thread = threading.Thread(target=self._run, name="cluster-leases", daemon=True)
        self.store_error: str | None = None  # why the last round could not reach the store
        self.renewals = 0
        self.claims = 0
        self.lost = 0
        self.pending: int | None = None  # the store's count at the last renewal round
        self._expired_from = 0.0  # monotonic: no expired lease is claimed before (after a store outage)
        # The epoch under which this replica ran each session (lost ones too, newest kept): what its
        # event writes are fenced with. Bounded: the oldest are forgotten past _EPOCHS_KEPT.
        self._epochs: OrderedDict[str, int] = OrderedDict()

    def refused(self, conn, session_ids: set[str]) -> set[str]:
        """For the event writer, inside its transaction: the sessions whose epoch moved on since this
        replica ran them (another replica claimed them): their rows must not be written."""
        with self._lock:
            pairs = {(sid, self._epochs[sid]) for sid in session_ids if sid in self._epochs}
        return {sid for sid, _ in pairs} - self.records.fence(conn, pairs)

    def _remember_epoch(self, session_id: str, epoch: int) -> None:
        with self._lock:
            self._epochs[session_id] = epoch
            self._epochs.move_to_end(session_id)
            while len(self._epochs) > _EPOCHS_KEPT:
                self._epochs.popitem(last=False)

    def figures(self) -> dict:
        """For /metrics: pending sessions, whether the store answered, claims, renewals, losses."""
        return {
            "pending": self.pending,
            "store_up": self.store_error is None,
            "claims": self.claims,
            "renewals": self.renewals,
            "lost": self.lost,
        }

    def start(self) -> None:
        self._thread.start()

    @property
    def interval_s(self) -> float:
        """How often leases are renewed (and a stop from another replica is seen)."""
        return self.lease_s / 3.0

    # -- called by the manager (API threads and the event loop) -------------------------------

    def record(self, session: Session) -> None:
        """Record a session just started here as ours; SessionError(store_unavailable) if the
        store cannot be written (the caller then stops the session: nothing runs unrecorded)."""
        record = SessionRecord(
            id=session.id,
            options=options_to_record(session.options),
            viewer_token=session.viewer_token,
            state="running",
        )
        try:
            claimed = self.records.add(record, owner=self.replica, lease_s=self.lease_s)
        except Exception as exc:  # noqa: BLE001 - database down or refusing: the start fails in words
            raise SessionError("store_unavailable", f"The session store cannot be written: {words(exc)}") from exc
        with self._lock:
            self._held[session.id] = _Held(claimed.epoch, claimed.options_rev)
        self._remember_epoch(session.id, claimed.epoch)

    @property
    def shared(self) -> bool:
        return self.records.shared

    def record_pending(self, options: SessionOptions) -> tuple[str, str]:
        """Record a session no place here can take, for the first replica with room; (id, token)."""
        session_id, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
        record = SessionRecord(id=session_id, options=options_to_record(options), viewer_token=token, state="pending")
        try:
            self.records.add(record)
        except Exception as exc:  # noqa: BLE001
            raise SessionError("store_unavailable", f"The session store cannot be written: {words(exc)}") from exc
        log.info("session %s recorded as pending: no place on this replica", session_id)
        return session_id, token

    def stopped(self, session_id: str) -> None:
        """A session of ours was stopped by request here: it stays stopped, everywhere."""
        with self._lock:
            held = self._held.pop(session_id, None)
        try:
            self.records.request_stop(session_id)
            if held is not None:
                self.records.set_state(session_id, self.replica, held.epoch, "stopped")
        except Exception as exc:  # noqa: BLE001 - the owner's copy is stopped; the row catches up on renewal
            log.warning("session %s stopped, but the store could not record it: %s", session_id, words(exc))

    def options_changed_here(self, session_id: str, changes: dict) -> None:
        """A session of ours got new zones or a new record mode (`changes`, by option name): recorded, so
        that wherever it runs next it keeps them (and not applied a second time here at the next renewal)."""
        record = self.records.get(session_id)
        if record is None:
            return
        rev = self.records.update_options(session_id, dict(record.options, **changes))
        with self._lock:
            if session_id in self._held:
                self._held[session_id].rev = rev

    def update_options(self, session_id: str, options: dict) -> int:
        """New options (zones, record mode) for a session another replica runs: it applies them at its
        next renewal."""
        try:
            return self.records.update_options(session_id, options)
        except Exception as exc:  # noqa: BLE001
            raise SessionError("store_unavailable", f"The session store cannot be written: {words(exc)}") from exc

    def request_stop(self, session_id: str) -> bool:
        """Stop a session another replica runs (or none does); False when none is recorded."""
        try:
            return self.records.request_stop(session_id)
        except Exception as exc:  # noqa: BLE001
            raise SessionError("store_unavailable", f"The session store cannot be read: {words(exc)}") from exc

    def find(self, session_id: str) -> SessionRecord | None:
        """The recorded session, wherever it runs."""
        try:
            return self.records.get(session_id)
        except Exception as exc:  # noqa: BLE001
            raise SessionError("store_unavailable", f"The session store cannot be read: {words(exc)}") from exc

    def list(self) -> list[SessionRecord]:
        try:
            return self.records.list()
        except Exception as exc:  # noqa: BLE001
            raise SessionError("store_unavailable", f"The session store cannot be read: {words(exc)}") from exc

    def drain(self) -> int:
        """Stop claiming and give every session of ours back, so the other replicas take them at
        once (this replica then stops its copies); how many were released."""
        self._draining = True
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)
        with self._lock:
            ids = list(self._held)
            self._held.clear()
        try:
            released = self.records.release(self.replica, ids)
        except Exception as exc:  # noqa: BLE001 - their leases run out instead
            log.warning("drain: could not release %d session(s), their leases will run out: %s", len(ids), words(exc))
            return 0
        log.info("drain: released %d session(s) to the other replicas", released)
        return released

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)

    # -- the lease thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_renewal = 0.0
        while not self._stop.is_set():
            try:
                renew = time.monotonic() >= next_renewal
                if renew:
                    next_renewal = time.monotonic() + self.interval_s
                self._round(renew)
                if self.store_error is not None:
                    log.info("session store reachable again")
                self.store_error = None
            except Exception as exc:  # noqa: BLE001 - the store is down: keep running what runs, retry
                first = self.store_error is None
                self.store_error = words(exc)
                if first:
                    log.warning("session store unreachable; sessions here keep running: %s", self.store_error)
            self._stop.wait(min(CLAIM_EVERY_S, self.interval_s))

    def _round(self, renew: bool) -> None:
        if self.store_error is not None:  # maybe back from an outage: let the owners renew first
            self._expired_from = time.monotonic() + self.lease_s
        with self._lock:
            held = {sid: h.epoch for sid, h in self._held.items()}
        if renew:
            self.pending = self.records.pending_count()
        if held and renew:
            renewal = self.records.renew(self.replica, held, self.lease_s)
            self.renewals += 1
            for session_id, why in renewal.lost.items():
                self._lose(session_id, why)
            for session_id in renewal.stop:
                self._stop_here(session_id)
            applied = {sid: h.rev for sid, h in self._snapshot().items()}
            for session_id in renewal.changed(applied):
                self._apply_options(session_id)
        self._write_states()
        self._retry_due()
        free = self._manager.free_places()
        if free > 0 and not self._draining and not self._stop.is_set():
            expired = time.monotonic() >= self._expired_from
            for claimed in self.records.claim(self.replica, free, self.lease_s, expired=expired):
                self.claims += 1
                self._adopt(claimed)

    def _snapshot(self) -> dict[str, _Held]:
        with self._lock:
            return dict(self._held)

    def _lose(self, session_id: str, why: str) -> None:
        with self._lock:
            self._held.pop(session_id, None)
        self.lost += 1
        log.warning("session %s: %s; stopping it here", session_id, why)
        self._manager.drop(session_id, f"moved to another replica: {why}", handover=True)

    def _stop_here(self, session_id: str) -> None:
        with self._lock:
            held = self._held.pop(session_id, None)
        self._manager.drop(session_id, "stopped by request")
        if held is not None:
            self.records.set_state(session_id, self.replica, held.epoch, "stopped")

    def _apply_options(self, session_id: str) -> None:
        record = self.records.get(session_id)
        session = self._manager.find(session_id)
        if record is None or session is None:
            return
        zones = record.options.get("zones")
        try:
            if zones is not None:
                session.set_zones(zones)
        except (ValueError, SessionError) as exc:
            log.warning("session %s: new zones from the store refused: %s", session_id, exc)
        mode = record.options.get("record", "off")
        try:
            if mode != session.options.record:
                session.set_record(record_mode(mode))
        except (ValueError, SessionError) as exc:
            log.warning("session %s: new record mode from the store refused: %s", session_id, exc)
        with self._lock:
            if session_id in self._held:
                self._held[session_id].rev = record.options_rev

    def _write_states(self) -> None:
        """Record each local session's state where it changed (fenced by our epoch)."""
        for session_id, held in self._snapshot().items():
            session = self._manager.find(session_id)
            if session is None or held.opening:
                continue
            now = (_STORE_STATES[session.state], session.last_error)
            if now != held.written:
                if self.records.set_state(session_id, self.replica, held.epoch, *now):
                    held.written = now

    # -- running a claimed session ------------------------------------------------------------

    def _adopt(self, claimed: Claimed) -> None:
        record = claimed.record
        try:
            options_from_record(record.options)
        except ValueError as exc:
            self.records.set_state(record.id, self.replica, record.epoch, "failed", f"cannot run it: {exc}")
            self.records.request_stop(record.id)
            return
        with self._lock:
            self._held[record.id] = _Held(record.epoch, record.options_rev, adopted=True)
        self._remember_epoch(record.id, record.epoch)
        where = f"from {claimed.previous_owner}" if claimed.previous_owner else "recorded, unowned"
        log.info("session %s claimed (%s), epoch %d: opening it here", record.id, where, record.epoch)
        if claimed.previous_owner is not None:
            # Viewers that stayed (here, or relayed elsewhere) hear it at once, whether or not their
            # relay noticed the old owner's silence yet.
            detail = f"taken over from replica {claimed.previous_owner}: opening the stream on replica {self.replica}"
            self._manager.session_hub.publish_event(record.id, messages.moving_message(record.id, detail))
        self._open(record.id)

    def _retry_due(self) -> None:
        """Open again the claimed sessions whose last open failed, when due. A session started here
        that no longer runs here, without a stop through the manager (a start whose caller went
        away just as it was being recorded), is recorded as stopped: never run again unasked."""
        now = time.monotonic()
        for session_id, held in self._snapshot().items():
            if held.opening or self._manager.find(session_id) is not None:
                continue
            if held.adopted:
                if now >= held.next_at:
                    self._open(session_id)
            else:
                log.warning(
                    "session %s no longer runs here and was not stopped by request: recorded as stopped", session_id
                )
                self.stopped(session_id)

    def _open(self, session_id: str) -> None:
        record = self.records.get(session_id)
        with self._lock:
            held = self._held.get(session_id)
        if record is None or held is None:
            return
        options: SessionOptions = options_from_record(record.options)
        held.opening = True
        coroutine = self._manager.start(options, identity=(record.id, record.viewer_token))
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.add_done_callback(lambda f: self._opened(session_id, held, f, options))

    def _opened(self, session_id: str, held: _Held, future: Future, options: SessionOptions) -> None:
        held.opening = False
        try:
            future.result()
        except BaseException as exc:  # noqa: BLE001 - said in words in the store, retried with backoff
            delay = _RETRY_S[min(held.attempts, len(_RETRY_S) - 1)]
            held.attempts += 1
            held.next_at = time.monotonic() + delay
            error = f"{exc}; retrying in {delay:g} s"
            shown = redact_url(options.stream_url)
            log.warning("session %s on %s could not be opened again: %s", session_id, shown, error)
            try:
                self.records.set_state(session_id, self.replica, held.epoch, "reconnecting", error)
            except Exception:  # noqa: BLE001 - the next round says the store is down
                pass
            return
        held.attempts = 0
        held.written = None  # the next round records `running`
