"""The tuning-log database file: SQLite (stdlib), its schema, and the file-level jobs (list, stats, prune,
export, import). MetaSchedule's view of it is ``tuning_database.TuningDatabase``.

One file holds every workload, every measured candidate and what it was tuned
for. SQLite gives us the crash-safety the issue asks for: each record is its own
transaction (``kill -9`` loses at most the candidate in flight), WAL mode lets
two tuning processes write one file at once, and the file is never left half
written.

A ``TuningDatabase`` is bound to one target and one TVM version: records made
for another target or TVM version stay in the file, are listed by ``tunekit db``,
but are never returned to MetaSchedule, so they are never applied.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from tunekit.errors import TunekitError

DEFAULT_DB = Path("tuning_logs") / "tunekit.db"
SCHEMA_VERSION = 1
FAILED_SECS = 1e9  # MetaSchedule stores 1e10 s for a candidate that failed to build or run
# A workload's best record: the fastest inside a whole run of the model where `db rerank` timed some
# there, else the fastest measured alone (tuning's time). Build, prune and the search's seeds use it.
BEST_FIRST = "run_sec IS NULL, run_sec, mean_sec"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (
    id INTEGER PRIMARY KEY,
    shash TEXT NOT NULL,
    workload_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workloads_by_hash ON workloads (shash);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    workload_id INTEGER NOT NULL REFERENCES workloads (id),
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    record_json TEXT NOT NULL,
    mean_sec REAL,              -- NULL: the candidate failed to build or run
    source TEXT NOT NULL,       -- 'search', 'transfer', 'sibling', 'default', 'remeasure', 'import',
                                -- 'cold' (timed with cold caches: tune --cache-flush, db import --cold)
    created REAL NOT NULL,
    threads INTEGER,            -- CPU threads the candidate was measured on (NULL: unknown)
    run_sec REAL                -- per-call time inside a whole run of the model (db rerank); NULL: not timed there
);
CREATE INDEX IF NOT EXISTS records_by_workload ON records (workload_id, target, tvm_version, mean_sec);
CREATE TABLE IF NOT EXISTS tasks (
    workload_id INTEGER NOT NULL REFERENCES workloads (id),
    model TEXT NOT NULL,
    resolution INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    task_name TEXT NOT NULL,
    weight INTEGER NOT NULL,
    PRIMARY KEY (workload_id, model, resolution, batch, target, tvm_version, task_name)
);
CREATE TABLE IF NOT EXISTS pruned (  -- trials deleted by `db prune`: they still count as done
    workload_id INTEGER NOT NULL REFERENCES workloads (id),
    target TEXT NOT NULL,
    tvm_version TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (workload_id, target, tvm_version)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY,
    workload_id INTEGER NOT NULL REFERENCES workloads (id),
    target TEXT NOT NULL,
    stage TEXT NOT NULL,        -- 'build' or 'run'
    error TEXT NOT NULL,
    created REAL NOT NULL
);
"""


def target_key(target) -> str:
    """The canonical JSON of a TVM target, as stored with every record."""
    return json.dumps(dict(target.export()), sort_keys=True, default=list)


def tvm_version() -> str:
    import tvm

    return tvm.__version__


def _is_tunekit(conn: sqlite3.Connection) -> bool:
    try:
        return conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is not None
    except sqlite3.DatabaseError:
        return False


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """Open a tunekit database file; raises TunekitError if it is not one.

    ``readonly`` (db list, stats, export) never creates or changes a file. Otherwise
    a missing or empty file becomes a new database, and any other SQLite file (another
    application's) is refused untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise TunekitError(f"{path} is a directory, not a tunekit database")
    if readonly:
        if not path.is_file():
            raise TunekitError(f"no tuning database at {path} (tune something first, or pass --db)")
        if path.stat().st_size == 0:
            raise TunekitError(f"{path} is not a tunekit database (empty file)")
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60, check_same_thread=False)
        if not _is_tunekit(conn):
            conn.close()
            raise TunekitError(f"{path} is not a tunekit database")
        _check_version(conn, path)
        return conn
    fresh = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)  # autocommit; explicit BEGIN below
    try:
        if not fresh and not _is_tunekit(conn):
            raise TunekitError(f"{path} is not a tunekit database; it is left untouched (choose another --db)")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
        conn.execute("PRAGMA busy_timeout=60000")
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        _check_version(conn, path)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
        for column, kind in (("threads", "INTEGER"), ("run_sec", "REAL")):  # files from before the column
            if column not in columns:
                conn.execute(f"ALTER TABLE records ADD COLUMN {column} {kind}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise TunekitError(f"{path} is not a tunekit database: {exc}") from None
    except TunekitError:
        conn.close()
        raise
    return conn


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    (value,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if int(value) != SCHEMA_VERSION:
        raise TunekitError(f"{path} has schema version {value}; this tunekit reads {SCHEMA_VERSION}")


def resolve_path(db: str | Path | None) -> Path:
    """--db, else $TUNEKIT_DB, else tuning_logs/tunekit.db."""
    return Path(db or os.environ.get("TUNEKIT_DB") or DEFAULT_DB)


def open_database(path: str | Path, target, source: str = "search"):
    """A MetaSchedule ``Database`` over the SQLite file at ``path``, bound to ``target`` and this TVM
    (``tuning_database.TuningDatabase``; imported here, on first use, so that this module does not import tvm)."""
    from tunekit.tuning_database import TuningDatabase

    return TuningDatabase(path, target, source)


def short_target(key: str) -> str:
    """A target's stored JSON as a short label: ``llvm/znver4/2c``, ``cuda/sm_90``."""
    target = json.loads(key)
    parts = [target.get("kind", "?")]
    if "mcpu" in target:
        parts.append(target["mcpu"])
    if "arch" in target:
        parts.append(target["arch"])
    if "num-cores" in target:
        parts.append(f"{target['num-cores']}c")
    return "/".join(parts)


def tuned_summary(path: str | Path, workloads: set[int] | None = None) -> list[dict]:
    """One row per (model, resolution, batch, target, TVM version) the database knows.

    ``est_ms`` is the sum over the model's tasks of (calls x best measured time):
    MetaSchedule's own estimate of end-to-end latency, without the time between
    kernels; None until every task has a successful record. ``workloads`` keeps only
    those tasks (one preparation's: a database can hold a model's tasks in several
    layouts, with and without Winograd, and would otherwise sum them all).
    """
    conn = connect(path, readonly=True)
    only = f"WHERE t.workload_id IN ({','.join(str(int(w)) for w in workloads)})" if workloads is not None else ""
    rows = conn.execute(f"""
        SELECT t.model, t.resolution, t.batch, t.target, t.tvm_version, COUNT(*),
               SUM(r.best IS NOT NULL), COALESCE(SUM(r.n), 0), SUM(t.weight * r.best),
               COALESCE(SUM(r.transferred), 0)
        FROM tasks t LEFT JOIN (
            SELECT workload_id, target, tvm_version, MIN(mean_sec) AS best, COUNT(*) AS n,
                   SUM(source = 'transfer') AS transferred
            FROM records GROUP BY workload_id, target, tvm_version) r
          ON r.workload_id = t.workload_id AND r.target = t.target AND r.tvm_version = t.tvm_version
        {only}
        GROUP BY t.model, t.resolution, t.batch, t.target, t.tvm_version
        ORDER BY t.model, t.target, t.batch, t.resolution""").fetchall()
    conn.close()
    return [{"model": m, "resolution": res, "batch": b, "target": short_target(tg), "target_json": json.loads(tg),
             "tvm_version": v, "tasks": n, "tuned_tasks": int(tuned or 0), "trials": trials,
             "transferred": transferred,
             "est_ms": None if tuned != n or est is None else est * 1e3}
            for m, res, b, tg, v, n, tuned, trials, est, transferred in rows]


def convergence(path: str | Path, target: str, version: str, tasks: dict[int, dict[int, int]]) -> dict:
    """Estimated end-to-end latency against trials, replayed from the records' order of arrival.

    ``tasks`` maps each resolution to its tasks' {workload id: calls per inference}. Trials are
    the records of all those workloads on ``target`` and ``version``, in the order they were
    stored (failed ones count: they cost a build and a run). After trial n, a resolution's
    estimate is the sum over its tasks of calls x the best time measured so far, a task not
    reached yet counting at its default schedule's time (the untuned build's), or at its first
    record where it has no default. So the first point is the untuned estimate and the last is
    ``tuned_summary``'s est_ms. Returns {"trials": [n...], "seconds": [since the first record],
    "est_ms": {resolution: [...]}} with one point per trial, or empty lists when nothing is stored.
    """
    conn = connect(path, readonly=True)
    wids = sorted({w for uses in tasks.values() for w in uses})
    marks = ",".join("?" * len(wids))
    rows = conn.execute(f"SELECT workload_id, mean_sec, source, created FROM records WHERE target=? AND"
                        f" tvm_version=? AND workload_id IN ({marks}) ORDER BY id", (target, version, *wids)
                        ).fetchall() if wids else []
    conn.close()
    start: dict[int, float] = {}
    for wid, sec, source, _ in rows:  # a task's time before it was tuned
        if sec is not None and (source == "default" or wid not in start):
            start[wid] = sec
    out: dict = {"trials": [], "seconds": [], "est_ms": {res: [] for res in tasks}}
    if any(w not in start for w in wids):
        return out  # some task has no successful record: no estimate of the whole model
    best = dict(start)
    first = rows[0][3] if rows else 0.0
    for n, (wid, sec, _, created) in enumerate(rows, 1):
        if sec is not None:
            best[wid] = min(best[wid], sec)
        out["trials"].append(n)
        out["seconds"].append(created - first)
        for res, uses in tasks.items():
            out["est_ms"][res].append(1e3 * sum(calls * best[w] for w, calls in uses.items()))
    return out


def stats(path: str | Path) -> dict:
    """Counts of what the database holds, and the most common failure messages."""
    conn = connect(path, readonly=True)
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    out = {
        "path": str(path),
        "size_mb": round(Path(path).stat().st_size / 2**20, 2),
        "workloads": one("SELECT COUNT(*) FROM workloads"),
        "records": one("SELECT COUNT(*) FROM records"),
        "failed_records": one("SELECT COUNT(*) FROM records WHERE mean_sec IS NULL"),
        "targets": [short_target(t) + f" (TVM {v}): {n} records" for t, v, n in conn.execute(
            "SELECT target, tvm_version, COUNT(*) FROM records GROUP BY target, tvm_version")],
        "by_source": dict(conn.execute("SELECT source, COUNT(*) FROM records GROUP BY source").fetchall()),
        "top_failures": [f"{n} x {stage}: {err.strip().splitlines()[-1][:150] if err.strip() else '?'}"
                         for stage, err, n in conn.execute(
                             "SELECT stage, error, COUNT(*) AS n FROM failures GROUP BY stage, error"
                             " ORDER BY n DESC LIMIT 5")],
    }
    conn.close()
    return out


def prune(path: str | Path, top_k: int) -> int:
    """Keep the best ``top_k`` successful records per workload, target and TVM version; returns
    how many were deleted. Deleted trials still count toward a task's budget, so resume does
    not re-tune them."""
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"""CREATE TEMP TABLE doomed AS SELECT id, workload_id, target, tvm_version FROM (
        SELECT id, workload_id, target, tvm_version, ROW_NUMBER() OVER (
            PARTITION BY workload_id, target, tvm_version
            ORDER BY mean_sec IS NULL, {BEST_FIRST}) AS rank FROM records) WHERE rank > ?""", (top_k,))
    conn.execute("""INSERT INTO pruned SELECT workload_id, target, tvm_version, COUNT(*) FROM doomed
        GROUP BY 1, 2, 3 ON CONFLICT (workload_id, target, tvm_version) DO UPDATE SET n = n + excluded.n""")
    deleted = conn.execute("DELETE FROM records WHERE id IN (SELECT id FROM doomed)").rowcount
    conn.execute("DROP TABLE doomed")
    conn.execute("COMMIT")
    conn.execute("VACUUM")
    conn.close()
    return deleted


def export_tvm_json(path: str | Path, out_dir: str | Path, target: str | None = None) -> tuple[int, int]:
    """Write TVM's JSONDatabase layout (database_workload.json, database_tuning_record.json).

    Only records of this TVM version are written; ``target`` (a stored target JSON)
    restricts them to one target, since stock TVM applies a record whatever its
    target. Returns (workloads, records) written.
    """
    conn = connect(path, readonly=True)
    sql = ("SELECT r.workload_id, w.workload_json, r.record_json FROM records r JOIN workloads w"
           " ON w.id = r.workload_id WHERE r.mean_sec IS NOT NULL AND r.tvm_version = ?")
    args: list = [tvm_version()]
    if target is not None:
        sql += " AND r.target = ?"
        args.append(target)
    rows = conn.execute(sql + " ORDER BY r.workload_id, r.mean_sec", args).fetchall()
    conn.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[int, int] = {}
    with open(out / "database_workload.json", "w") as wf, open(out / "database_tuning_record.json", "w") as rf:
        for wid, workload_json, record_json in rows:
            if wid not in index:
                index[wid] = len(index)
                wf.write(workload_json + "\n")
            rf.write(json.dumps([index[wid], json.loads(record_json)]) + "\n")
    return len(index), len(rows)


def import_tvm_json(path: str | Path, in_dir: str | Path, cold: bool = False) -> tuple[int, int]:
    """Add the records of a TVM JSONDatabase directory (source 'import', or 'cold' where ``cold``: they were
    timed with cold caches, as by ``tune --cache-flush``); returns (added, already there).

    Importing the same directory twice adds nothing the second time. TVM's format
    does not say which model and resolution a workload belongs to: imported records
    show in ``db list`` once a tune or build of a model that uses them has run
    (``unassigned_workloads`` counts the others)."""
    from tvm.s_tir import meta_schedule as ms

    src = Path(in_dir)
    files = [src / "database_workload.json", src / "database_tuning_record.json"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise TunekitError(f"{src} is not a TVM JSON database: missing {', '.join(missing)}")
    records = ms.database.JSONDatabase(str(files[0]), str(files[1]), allow_missing=False).get_all_tuning_records()
    if not records:
        return 0, 0
    db = open_database(path, records[0].target, source="cold" if cold else "import")
    added = 0
    for record in records:
        if not db.has_record(record):
            db.commit_tuning_record(record)
            added += 1
    return added, len(records) - added


def unassigned_workloads(path: str | Path) -> int:
    """Workloads with records but no known (model, resolution) task: imported, not yet used by a tune or build."""
    conn = connect(path, readonly=True)
    try:
        return conn.execute("SELECT COUNT(DISTINCT r.workload_id) FROM records r WHERE NOT EXISTS"
                            " (SELECT 1 FROM tasks t WHERE t.workload_id = r.workload_id)").fetchone()[0]
    finally:
        conn.close()
