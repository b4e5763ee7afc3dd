"""The load that session leases put on PostgreSQL (issue 17): R replicas holding N sessions, on this machine.

The real `SessionRecords` (rtdetr_service/sessions/records.py) on Debian's PostgreSQL (a server of
its own in a temporary folder, as the tests start it), in a database made by the real Alembic
migration. N sessions are recorded, each started on one of R replicas in turn (`add` with that
replica as owner, as a start does), so every replica holds its share. Then, for `--seconds`, each
replica is a thread with an engine of its own (as a process of its own would have) doing what
the lease thread of sessions/cluster.py does each round: every SESSION_LEASE_S/3 `pending_count`
and `renew` of all it holds; then, while it has free places under `--max-sessions`, `claim`; then
it waits CLAIM_EVERY_S (1 s). Nothing is claimable in this steady state, so each claim finds
nothing: the load of a healthy cluster. `--max-sessions` defaults to the room a replica needs to
take over a lost replica's share (N / (R - 1)), so the claim runs every second as on a cluster
sized for failover.

Reported per N: transactions per second on the server for that database (xact_commit +
xact_rollback of pg_stat_database), rows returned/fetched/updated per second (tup_*), the same
per 100 sessions, the wall ms (mean, p99) of one renew, claim and pending_count call, and the CPU
seconds per second of the PostgreSQL server's processes (the postmaster and its children, from
/proc; children that exit count through the postmaster's reaped-children time).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/lease_load.py --sessions 100,1000   # what make bench-cluster runs
    PYTHONPATH=rt-detr-service .venv/bin/python bench/lease_load.py --seconds 5     # a check

Take figures with nothing else running on the machine. JSON in --out, a summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "tests"))
sys.path.insert(2, str(ROOT / "rt-detr-service"))

from measure import cpu_seconds, percentiles_ms  # noqa: E402

from rtdetr_service.outputs.store import migrate  # noqa: E402
from rtdetr_service.outputs.store.schema import Database  # noqa: E402
from rtdetr_service.sessions.cluster import CLAIM_EVERY_S  # noqa: E402
from rtdetr_service.sessions.desired import options_to_record  # noqa: E402
from rtdetr_service.sessions.records import SessionRecord, SessionRecords  # noqa: E402
from rtdetr_service.sessions.session import SessionOptions  # noqa: E402
from rtdetr_service.sessions.settings import ClusterSettings  # noqa: E402

from servers import Postgres, running_postgres  # noqa: E402

LEASE_S = ClusterSettings.model_fields["session_lease_s"].default
COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")


class Replica(threading.Thread):
    """One replica's lease thread, as sessions/cluster.py runs it, timing each call to the store."""

    def __init__(
        self, name: str, db: Database, held: dict[str, int], capacity: int, lease_s: float, offset_s: float
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.records = SessionRecords(db)
        self.held = dict(held)  # session id -> epoch of our claim
        self.capacity = capacity
        self.lease_s = lease_s
        self.offset_s = offset_s  # replicas are not in step with each other
        self.stop = threading.Event()
        self.calls: dict[str, list[float]] = defaultdict(list)  # call -> wall seconds of each
        self.lost = 0

    def _timed(self, call: str, function, *args):
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.calls[call].append(time.perf_counter() - start)

    def run(self) -> None:
        interval = self.lease_s / 3.0
        next_renewal = 0.0
        self.stop.wait(self.offset_s)
        while not self.stop.is_set():
            renew = time.monotonic() >= next_renewal
            if renew:
                next_renewal = time.monotonic() + interval
                self._timed("pending_count", self.records.pending_count)
                if self.held:
                    renewal = self._timed("renew", self.records.renew, self.name, self.held, self.lease_s)
                    for session_id in renewal.lost:  # none in this steady state; counted if it happens
                        self.held.pop(session_id)
                        self.lost += 1
            free = self.capacity - len(self.held)
            if free > 0:
                for claimed in self._timed("claim", self.records.claim, self.name, free, self.lease_s):
                    self.held[claimed.id] = claimed.epoch
            self.stop.wait(min(CLAIM_EVERY_S, interval))


def server_counters(server: Postgres, database: str) -> dict[str, int]:
    """pg_stat_database's counters of `database`, read from another database so the read is not counted."""
    admin = sa.create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            row = conn.execute(
                sa.text(f"SELECT {', '.join(COUNTERS)} FROM pg_stat_database WHERE datname = :name"), {"name": database}
            ).one()
    finally:
        admin.dispose()
    return dict(zip(COUNTERS, (int(v) for v in row), strict=True))


def server_cpu_seconds(server: Postgres) -> float:
    """CPU seconds the PostgreSQL server's processes have used: the postmaster, its exited children
    (reaped, so counted in its own figures) and the children alive now."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster, reaped_children=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) == postmaster:  # field 4, the parent's pid
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile: the postmaster counts it
            continue
    return total


def record_sessions(url: str, folder: Path, sessions: int, replicas: int, lease_s: float) -> list[dict[str, int]]:
    """A new database at the head revision with `sessions` sessions started on the replicas in turn;
    what each replica holds ({id: epoch})."""
    db = Database(url, folder, busy_timeout_s=10.0)
    try:
        migrate.upgrade(db)
        records = SessionRecords(db)
        held: list[dict[str, int]] = [{} for _ in range(replicas)]
        for i in range(sessions):
            options = options_to_record(SessionOptions(stream_url=f"rtsp://cam:pw@10.0.{i // 250}.{i % 250}/stream"))
            record = SessionRecord(str(uuid.uuid4()), options, uuid.uuid4().hex, state="running")
            added = records.add(record, owner=f"r{i % replicas + 1}", lease_s=lease_s)
            held[i % replicas][added.id] = added.epoch
        return held
    finally:
        db.dispose()  # its server process exits and flushes its statistics before the window opens


def one_run(server: Postgres, folder: Path, sessions: int, args: argparse.Namespace) -> dict:
    """Record `sessions` sessions in a new database, run the replicas' lease threads on them, report."""
    name = server.new_database()
    url = server.url(name)
    held = record_sessions(url, folder, sessions, args.replicas, args.lease)
    capacity = args.max_sessions or math.ceil(sessions / max(1, args.replicas - 1))
    engines = [Database(url, folder, busy_timeout_s=10.0) for _ in range(args.replicas)]
    replicas = [
        Replica(f"r{i + 1}", db, held[i], capacity, args.lease, offset_s=i * CLAIM_EVERY_S / args.replicas)
        for i, db in enumerate(engines)
    ]
    time.sleep(1.5)  # the setup's statistics reach pg_stat_database (flushed at most every second)
    before, cpu, start = server_counters(server, name), server_cpu_seconds(server), time.monotonic()
    for replica in replicas:
        replica.start()
    time.sleep(args.seconds)
    for replica in replicas:
        replica.stop.set()
    for replica in replicas:
        replica.join(10)
    for db in engines:
        db.dispose()  # the connections' server processes exit, flush their statistics and are reaped
    elapsed = time.monotonic() - start
    time.sleep(1.5)
    cpu = server_cpu_seconds(server) - cpu
    after = server_counters(server, name)
    server.drop_database(name)

    run = {"sessions": sessions, "replicas": args.replicas, "max_sessions": capacity, "lease_s": args.lease}
    return dict(run, **figures(replicas, sessions, {key: after[key] - before[key] for key in COUNTERS}, cpu, elapsed))


def figures(replicas: list[Replica], sessions: int, delta: dict[str, int], cpu_s: float, elapsed: float) -> dict:
    """The server's rates over the window (also per 100 sessions) and each call's wall time."""
    rates = {key: delta[key] / elapsed for key in COUNTERS}
    rates["transactions"] = rates["xact_commit"] + rates["xact_rollback"]
    calls = defaultdict(list)
    for replica in replicas:
        for call, seconds in replica.calls.items():
            calls[call] += seconds
    return {
        "seconds": round(elapsed, 2),
        "per_s": {key: round(value, 2) for key, value in rates.items()},
        "per_s_per_100_sessions": {key: round(value * 100 / sessions, 2) for key, value in rates.items()},
        "postgres_cpu_s_per_s": round(cpu_s / elapsed, 4),
        "calls": {call: dict(percentiles_ms(s), mean=_mean_ms(s)) for call, s in sorted(calls.items())},
        "leases_lost": sum(replica.lost for replica in replicas),
    }


def _mean_ms(seconds: list[float]) -> float | None:
    return round(sum(seconds) / len(seconds) * 1000, 2) if seconds else None


def summary(run: dict) -> str:
    rates, per_100 = run["per_s"], run["per_s_per_100_sessions"]
    rows = ("tup_returned", "tup_fetched", "tup_updated")
    lines = [
        f"{run['sessions']} sessions on {run['replicas']} replicas (MAX_SESSIONS={run['max_sessions']}, "
        f"SESSION_LEASE_S={run['lease_s']:g}), {run['seconds']:g} s:",
        f"  server: {rates['transactions']} transactions/s, CPU {run['postgres_cpu_s_per_s']} s/s; rows/s "
        + ", ".join(f"{key[4:]} {rates[key]}" for key in rows),
        "  per 100 sessions: "
        + ", ".join(f"{key[4:] if key in rows else key} {per_100[key]}/s" for key in ("transactions", *rows)),
    ]
    for call, timing in run["calls"].items():
        lines.append(f"  {call}: {timing['n']} calls, mean {timing['mean']} ms, p99 {timing['p99']} ms")
    if run["leases_lost"]:
        lines.append(f"  leases lost: {run['leases_lost']} (none should be)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="100", help="session counts, comma-separated: one run each")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--max-sessions", type=int, default=None, help="places per replica (default N / (R - 1))")
    parser.add_argument("--lease", type=float, default=LEASE_S, help="SESSION_LEASE_S (the service's default)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured run")
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "lease_load.json")
    args = parser.parse_args()
    if Postgres.binaries() is None:
        sys.exit("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin): apt install postgresql")

    runs = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lease-")))
        server = stack.enter_context(running_postgres())
        for sessions in (int(n) for n in args.sessions.split(",")):
            runs.append(one_run(server, folder, sessions, args))
            print(summary(runs[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
