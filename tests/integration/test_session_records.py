"""Sessions as shared desired state, on real SQLite and PostgreSQL: claims up to capacity, leases by
the database's clock, epochs that fence an old owner, release, and stop and option changes seen at
renewal. Replicas here are names handed to one repository each, as replicas sharing a database are."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.schema import Database
from rtdetr_service.sessions.records import SessionRecord, SessionRecords, UnknownSession

from support import wait_until


@pytest.fixture
def db(database_url, tmp_path):
    database = Database(database_url, tmp_path, busy_timeout_s=10.0)
    migrate.upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def records(db) -> SessionRecords:
    return SessionRecords(db)


def add(records: SessionRecords, *ids: str) -> None:
    for sid in ids:
        records.add(SessionRecord(sid, {"stream_url": f"rtsp://user:pw@cam/{sid}", "camera": sid}, f"token-{sid}"))


def expire(records: SessionRecords, *claimed) -> None:
    """Wait (by the database's clock) until these claims' leases have run out."""
    last = max(claim.record.lease_until for claim in claimed)
    assert wait_until(lambda: records.now() > last, timeout=10.0, step=0.05), "the lease never ran out"


def test_a_recorded_session_reads_back_and_hides_its_stream_url_from_repr(records):
    add(records, "cam-a")
    record = records.get("cam-a")
    assert record.options == {"stream_url": "rtsp://user:pw@cam/cam-a", "camera": "cam-a"}
    assert (record.desired, record.state, record.owner, record.lease_until, record.epoch) == (
        "run",
        "pending",
        None,
        None,
        0,
    )
    assert record.options_rev == 1 and record.created_at == record.updated_at
    assert "pw@" not in repr(record) and "token-" not in repr(record)
    assert records.get("nope") is None
    with pytest.raises(ValueError, match="already recorded"):
        add(records, "cam-a")
    with pytest.raises(ValueError, match="state must be one of"):
        records.add(SessionRecord("cam-b", {}, "h", state="dancing"))
    assert [r.id for r in records.list()] == ["cam-a"]


def test_claims_take_the_oldest_waiting_sessions_up_to_capacity(records):
    # Given five sessions waiting
    add(records, "s0", "s1", "s2", "s3", "s4")
    assert records.pending_count() == 5

    # When replica A claims with room for three, then B with room for ten
    a = records.claim("replica-a", capacity=3, lease_s=30)
    b = records.claim("replica-b", capacity=10, lease_s=30)

    # Then A has the three oldest, B the other two, each opening at epoch 1, and none is left
    assert [c.id for c in a] == ["s0", "s1", "s2"] and [c.id for c in b] == ["s3", "s4"]
    assert all(c.record.owner == "replica-a" and c.epoch == 1 and c.record.state == "opening" for c in a)
    assert all(c.previous_owner is None for c in a + b)
    assert records.claim("replica-c", capacity=10, lease_s=30) == []
    assert records.pending_count() == 0
    assert [r.id for r in records.owned_by("replica-b")] == ["s3", "s4"]
    assert records.get("s1").owner == "replica-a" and records.get("s1").state == "opening"
    assert records.claim("replica-c", capacity=0, lease_s=30) == []


def test_leases_are_judged_by_the_databases_clock_not_the_replicas(records, db, monkeypatch):
    # Given a replica whose own clock runs a day ahead of the database's
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400.0)
    add(records, "cam")
    with db.engine.connect() as conn:
        before = conn.scalar(sa.select(db.now()))

    # When it claims for 30 s
    (claim,) = records.claim("replica-a", capacity=1, lease_s=30)

    # Then the lease runs 30 s past the database's now, and so does the renewal
    with db.engine.connect() as conn:
        after = conn.scalar(sa.select(db.now()))
    assert before + 30 <= claim.record.lease_until <= after + 30
    renewal = records.renew("replica-a", {"cam": claim.epoch}, lease_s=30)
    assert after + 30 <= renewal.lease_until <= records.now() + 30
    assert abs(records.get("cam").created_at - before) < 5.0


def test_the_databases_clock_is_its_own_now(records, db, backend):
    sql = "SELECT EXTRACT(EPOCH FROM now())" if backend == "postgresql" else "SELECT unixepoch('now')"
    with db.engine.connect() as conn:
        server = float(conn.scalar(sa.text(sql)))
    assert abs(records.now() - server) < 2.0


def claim_concurrently(replicas: list[SessionRecords]) -> dict[int, list[str]]:
    """Every replica claiming two at a time, all starting together, until none gets any more."""
    taken: dict[int, list[str]] = {n: [] for n in range(len(replicas))}
    start = threading.Barrier(len(replicas))
    failures: list[BaseException] = []

    def claim_all(n: int) -> None:
        try:
            start.wait()
            while batch := replicas[n].claim(f"replica-{n}", capacity=2, lease_s=60):
                taken[n].extend(c.id for c in batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    return taken


def test_concurrent_claimers_never_take_the_same_session(records, db):
    # Given rounds of sessions and four replicas claiming at once, a few at a time
    replicas = [SessionRecords(db) for _ in range(4)]
    for round_ in range(15):
        ids = [f"r{round_:02d}-{n:02d}" for n in range(24)]
        add(records, *ids)
        taken = claim_concurrently(replicas)

        # Then each session went to exactly one replica, and the rows say the same
        everything = [sid for mine in taken.values() for sid in mine]
        assert sorted(everything) == ids, f"round {round_}: {taken}"
        for n, mine in taken.items():
            assert {r.id for r in records.owned_by(f"replica-{n}") if r.id in ids} == set(mine)
        assert all(records.get(sid).epoch == 1 for sid in ids)


def test_an_expired_lease_moves_the_session_and_fences_the_old_owner(records, db):
    # Given replica A owning a session on a 1 s lease, and then not renewing it
    add(records, "cam")
    (old,) = records.claim("replica-a", capacity=5, lease_s=1)
    assert records.claim("replica-b", capacity=5, lease_s=30) == []
    expire(records, old)
    assert records.pending_count() == 1

    # When B claims
    (new,) = records.claim("replica-b", capacity=5, lease_s=30)

    # Then B owns it at the next epoch, it is moving, and A was its owner before
    assert (new.id, new.epoch, new.record.state, new.previous_owner) == ("cam", 2, "moving", "replica-a")

    # And A's renewal says it is lost, and A's writes are refused while B's go through
    renewal = records.renew("replica-a", {"cam": old.epoch}, lease_s=30)
    assert renewal.renewed == frozenset() and "epoch 2" in renewal.lost["cam"] and "replica-b" in renewal.lost["cam"]
    assert renewal.lease_until is None
    assert records.set_state("cam", "replica-a", old.epoch, "running") is False
    assert records.set_state("cam", "replica-b", new.epoch, "running") is True
    assert records.release("replica-a", ["cam"]) == 0
    with db.write_transaction() as conn:
        assert records.fence(conn, [("cam", old.epoch)]) == set()
        assert records.fence(conn, [("cam", new.epoch), ("gone", 1)]) == {"cam"}
    record = records.get("cam")
    assert (record.owner, record.state, record.epoch) == ("replica-b", "running", 2)


def test_a_late_renewal_still_holds_when_no_one_took_the_session(records):
    add(records, "cam")
    (claim,) = records.claim("replica-a", capacity=1, lease_s=1)
    expire(records, claim)
    renewal = records.renew("replica-a", {"cam": claim.epoch}, lease_s=30)
    assert renewal.renewed == {"cam"} and renewal.lost == {}
    assert records.claim("replica-b", capacity=1, lease_s=30) == []


def test_release_lets_another_replica_claim_at_once(records):
    # Given A owning two sessions on long leases
    add(records, "cam-1", "cam-2")
    held = {c.id: c.epoch for c in records.claim("replica-a", capacity=5, lease_s=300)}

    # When A drains: it releases them
    assert records.release("replica-a", held) == 2

    # Then they are unowned and moving, and B takes both at once, at the next epoch
    assert all(r.owner is None and r.lease_until is None and r.state == "moving" for r in records.list())
    taken = records.claim("replica-b", capacity=5, lease_s=30)
    assert [(c.id, c.epoch, c.previous_owner, c.record.state) for c in taken] == [
        ("cam-1", 2, None, "moving"),
        ("cam-2", 2, None, "moving"),
    ]
    lost = records.renew("replica-a", held, lease_s=30).lost
    assert set(lost) == {"cam-1", "cam-2"} and "replica-b" in lost["cam-1"]


def test_stop_and_new_options_reach_the_owner_at_its_next_renewal(records):
    # Given A owning two sessions, having applied options revision 1 of each
    add(records, "cam-1", "cam-2")
    held = {c.id: c.epoch for c in records.claim("replica-a", capacity=5, lease_s=30)}
    applied = {"cam-1": 1, "cam-2": 1}

    # When another replica changes cam-1's zones and asks cam-2 to stop
    rev = records.update_options("cam-1", {"stream_url": "rtsp://cam/1", "zones": [{"name": "door"}]})
    assert rev == 2
    assert records.request_stop("cam-2") is True

    # Then A's renewal keeps both leases and says what to do
    renewal = records.renew("replica-a", held, lease_s=30)
    assert renewal.renewed == {"cam-1", "cam-2"} and renewal.lost == {}
    assert renewal.changed(applied) == {"cam-1"} and renewal.stop == {"cam-2"}
    assert records.get("cam-1").options["zones"] == [{"name": "door"}]
    assert records.get("cam-2").state == "opening"  # its owner stops it and says so
    assert records.set_state("cam-2", "replica-a", held["cam-2"], "stopped") is True
    assert records.release("replica-a", ["cam-2"]) == 1

    # And a stopped session is claimed by no one, and stays stopped
    assert records.claim("replica-b", capacity=5, lease_s=30) == []
    assert records.get("cam-2").state == "stopped" and records.get("cam-2").owner is None
    with pytest.raises(UnknownSession):
        records.update_options("nope", {})
    assert records.request_stop("nope") is False


def test_a_stop_with_no_live_owner_is_stopped_at_once(records):
    # Given one session whose owner died (its lease ran out) and one no replica has claimed yet
    add(records, "abandoned", "never-claimed")
    (dead,) = records.claim("replica-dead", capacity=1, lease_s=1)
    assert dead.id == "abandoned" and records.get("never-claimed").owner is None
    expire(records, dead)

    # When both are asked to stop, then both are stopped and unowned at once
    assert records.request_stop("abandoned") and records.request_stop("never-claimed")
    for sid in ("abandoned", "never-claimed"):
        record = records.get(sid)
        assert (record.desired, record.state, record.owner, record.lease_until) == ("stop", "stopped", None, None)
    assert records.pending_count() == 0
    # And the dead owner, should it wake, learns it holds nothing
    assert records.renew("replica-dead", {"abandoned": dead.epoch}, lease_s=30).lost["abandoned"] == "released"


def test_retention_deletes_stopped_sessions_older_than_its_days(records, db):
    add(records, "old-stop", "new-stop", "old-run")
    records.request_stop("old-stop")
    records.request_stop("new-stop")
    forty_days_ago = records.now() - 40 * 86400
    with db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE sessions SET updated_at = :t WHERE id IN ('old-stop', 'old-run')"), {"t": forty_days_ago}
        )

    assert records.delete_stopped(older_than_days=30) == 1
    assert sorted(r.id for r in records.list()) == ["new-stop", "old-run"]


def test_an_owners_write_in_flight_holds_off_a_claim_on_postgresql(postgres_url, tmp_path):
    # (SQLite serialises writers: there, the fence's write transaction holds every claim off.)
    db = Database(postgres_url, tmp_path, busy_timeout_s=10.0)
    migrate.upgrade(db)
    records = SessionRecords(db)
    # Given A's lease ran out while its event writer's transaction holds the fence
    add(records, "cam")
    (claim,) = records.claim("replica-a", capacity=1, lease_s=1)
    expire(records, claim)
    with db.engine.begin() as conn:
        assert records.fence(conn, [("cam", claim.epoch)]) == {"cam"}
        # When B claims meanwhile, then it passes over the locked row
        assert records.claim("replica-b", capacity=1, lease_s=30) == []
    # And once that write has committed, B takes it
    (taken,) = records.claim("replica-b", capacity=1, lease_s=30)
    assert taken.epoch == claim.epoch + 1
    db.dispose()


def test_bad_arguments_are_refused_in_words(records):
    add(records, "cam")
    with pytest.raises(ValueError, match="lease_s must be > 0"):
        records.claim("replica-a", capacity=1, lease_s=0)
    with pytest.raises(ValueError, match="lease_s must be > 0"):
        records.renew("replica-a", {"cam": 1}, lease_s=-1)
    with pytest.raises(ValueError, match="state must be one of"):
        records.set_state("cam", "replica-a", 1, "sleeping")
    with pytest.raises(ValueError, match="a session id is 1 to 36 characters"):
        add(records, "x" * 37)


def test_a_session_started_here_is_recorded_as_ours_and_no_one_else_claims_it(records):
    # Given a start that opened its stream on A: recorded with A as owner, epoch 1
    mine = records.add(SessionRecord("cam-x", {"camera": "x"}, "token-x", state="running"), owner="a", lease_s=30)
    assert (mine.owner, mine.epoch, mine.state) == ("a", 1, "running") and mine.lease_until > records.now()
    # then B finds nothing to claim, and A renews it at epoch 1
    assert records.claim("b", capacity=5, lease_s=30) == []
    assert records.renew("a", {"cam-x": 1}, lease_s=30).renewed == {"cam-x"}
    with pytest.raises(ValueError, match="lease"):
        records.add(SessionRecord("cam-y", {}, "t"), owner="a", lease_s=None)
