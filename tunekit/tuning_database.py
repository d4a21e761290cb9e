"""MetaSchedule's ``Database`` over a tunekit SQLite file (``database.connect``), bound to one target and TVM
version, with the queries tuning, transfer and build run: no SQL outside this module and database.py.

It imports tvm, so it is imported only where a database is opened for tuning or building
(``database.open_database``); ``tunekit db list`` and friends never load it.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload
from tvm.s_tir.meta_schedule.database.database import _ffi_api

from tunekit.database import BEST_FIRST, FAILED_SECS, connect, target_key, tvm_version


@dataclass(frozen=True)
class TaskUse:
    """One place a workload is used: a task of (model, resolution, batch) on a target."""

    model: str
    resolution: int
    batch: int
    task_name: str
    weight: int


def to_plain_json(obj):
    """A MetaSchedule ``as_json`` object as plain JSON data, as TVM's own JSONDatabase writes it:
    numbers and strings as they are, other IR objects (the IndexMap of a layout rewrite) as
    TVM's JSON-graph string, which the trace reader parses back."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple, tvm_ffi.Array)):
        return [to_plain_json(x) for x in obj]
    if isinstance(obj, (dict, tvm_ffi.Map)):
        return {str(k): to_plain_json(v) for k, v in obj.items()}
    if isinstance(obj, tvm.tirx.IntImm):
        return int(obj.value)
    if isinstance(obj, tvm.tirx.FloatImm):
        return float(obj.value)
    return tvm.ir.save_json(obj)


@dataclass
class Donor:
    """The best record of a task at another resolution, which transfer adapts."""

    workload_id: int
    resolution: int
    mean_sec: float
    record_json: str


@derived_object
class TuningDatabase(PyDatabase):
    """MetaSchedule Database over a tunekit SQLite file, bound to one target and TVM version."""

    def __init__(self, path: str | Path, target, source: str = "search"):
        super().__init__()
        self.path = Path(path)
        self.conn = connect(self.path)
        self.target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
        self.target_key = target_key(self.target)
        self.version = tvm_version()
        self.source = source
        self.threads: int | None = None  # what the runner measures on; stored with every record
        self._by_hash: dict[str, list[tuple[int, Workload]]] = {}
        self._ids: dict[int, Workload] = {}

    # ---- workloads
    def _lookup(self, mod) -> tuple[int, Workload] | None:
        shash = str(tvm_ffi.structural_hash(mod))
        for wid, workload in self._by_hash.get(shash, []):
            if tvm_ffi.structural_equal(workload.mod, mod):
                return wid, workload
        # another process may have committed it since: look in the file
        known = {wid for wid, _ in self._by_hash.get(shash, [])}
        rows = self.conn.execute("SELECT id, workload_json FROM workloads WHERE shash=?", (shash,)).fetchall()
        for wid, text in rows:
            if wid in known:
                continue
            workload = Workload.from_json(json.loads(text))
            self._by_hash.setdefault(shash, []).append((wid, workload))
            self._ids[wid] = workload
            if tvm_ffi.structural_equal(workload.mod, mod):
                return wid, workload
        return None

    def workload_by_id(self, wid: int) -> Workload:
        if wid not in self._ids:
            (text,) = self.conn.execute("SELECT workload_json FROM workloads WHERE id=?", (wid,)).fetchone()
            self._ids[wid] = Workload.from_json(json.loads(text))
        return self._ids[wid]

    def checkpoint(self) -> None:
        """Move the write-ahead log into the file itself, so that a plain copy of the file (``cp``) holds
        every record. MetaSchedule keeps this object alive to the end of the process, so SQLite's own
        checkpoint on close may never run."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def has_workload(self, mod) -> bool:
        return self.find_workload(mod) is not None

    def find_workload(self, mod) -> int | None:
        """The row id of ``mod``'s workload, or None when the file does not hold it (nothing is written)."""
        found = self._lookup(mod)
        return found[0] if found else None

    def commit_workload(self, mod) -> Workload:
        return self._ids[self.workload_id(mod)]

    def workload_id(self, mod) -> int:
        """The row id of ``mod``'s workload, inserting it if new (safe against concurrent writers)."""
        found = self._lookup(mod)
        if found:
            return found[0]
        self.conn.execute("BEGIN IMMEDIATE")  # serialise with other writers, then look again
        try:
            found = self._lookup(mod)
            if found:
                self.conn.execute("COMMIT")
                return found[0]
            workload = Workload(mod)
            shash = str(tvm_ffi.structural_hash(mod))
            cur = self.conn.execute("INSERT INTO workloads (shash, workload_json) VALUES (?, ?)",
                                    (shash, json.dumps(to_plain_json(_ffi_api.WorkloadAsJSON(workload)))))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self._by_hash.setdefault(shash, []).append((cur.lastrowid, workload))
        self._ids[cur.lastrowid] = workload
        return cur.lastrowid

    def _id_of(self, workload: Workload) -> int:
        for wid, known in self._ids.items():
            if known.same_as(workload):
                return wid
        return self.workload_id(workload.mod)

    # ---- records
    def has_record(self, record: TuningRecord) -> bool:
        """Whether this exact record (same workload, target, trace and times) is stored already."""
        target = target_key(record.target) if record.target is not None else self.target_key
        text = json.dumps(to_plain_json(_ffi_api.TuningRecordAsJSON(record)))
        return self.conn.execute("SELECT 1 FROM records WHERE workload_id=? AND target=? AND tvm_version=?"
                                 " AND record_json=? LIMIT 1",
                                 (self._id_of(record.workload), target, self.version, text)).fetchone() is not None

    @contextmanager
    def storing_as(self, source: str):
        """Records committed inside the block are stored with ``source``; the one before comes back after."""
        previous, self.source = self.source, source
        try:
            yield self
        finally:
            self.source = previous

    def commit_tuning_record(self, record: TuningRecord) -> None:
        secs = [float(s) for s in (record.run_secs or [])]
        mean = sum(secs) / len(secs) if secs and max(secs) < FAILED_SECS else None
        target = target_key(record.target) if record.target is not None else self.target_key
        self.conn.execute(
            "INSERT INTO records (workload_id, target, tvm_version, record_json, mean_sec, source, created,"
            " threads) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._id_of(record.workload), target, self.version,
             json.dumps(to_plain_json(_ffi_api.TuningRecordAsJSON(record))), mean, self.source, time.time(),
             self.threads))

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        rows = self.conn.execute(
            "SELECT record_json FROM records WHERE workload_id=? AND target=? AND tvm_version=?"
            f" AND mean_sec IS NOT NULL ORDER BY {BEST_FIRST} LIMIT ?",
            (self._id_of(workload), self.target_key, self.version, top_k)).fetchall()
        return [TuningRecord.from_json(json.loads(text), workload) for (text,) in rows]

    def get_all_tuning_records(self) -> list[TuningRecord]:
        rows = self.conn.execute(
            "SELECT r.record_json, r.workload_id, w.workload_json FROM records r JOIN workloads w"
            " ON w.id = r.workload_id WHERE r.target=? AND r.tvm_version=?",
            (self.target_key, self.version)).fetchall()
        records = []
        for text, wid, wtext in rows:
            if wid not in self._ids:
                self._ids[wid] = Workload.from_json(json.loads(wtext))
            records.append(TuningRecord.from_json(json.loads(text), self._ids[wid]))
        return records

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM records WHERE target=? AND tvm_version=?",
                                 (self.target_key, self.version)).fetchone()[0]

    # ---- tunekit's own bookkeeping
    def note_task(self, mod, use: TaskUse) -> int:
        """Record that ``mod`` is a task of (model, resolution, batch) on this target; returns its id."""
        wid = self.workload_id(mod)
        self.conn.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (wid, use.model, use.resolution, use.batch, self.target_key, self.version,
                           use.task_name, use.weight))
        return wid

    def trials(self, wid: int) -> int:
        """Candidates measured for workload ``wid`` on this target and version (failed and pruned too)."""
        args = (wid, self.target_key, self.version)
        kept = self.conn.execute("SELECT COUNT(*) FROM records WHERE workload_id=? AND target=?"
                                 " AND tvm_version=?", args).fetchone()[0]
        pruned = self.conn.execute("SELECT COALESCE(SUM(n), 0) FROM pruned WHERE workload_id=? AND target=?"
                                   " AND tvm_version=?", args).fetchone()[0]
        return kept + pruned

    def best_sec(self, wid: int) -> float | None:
        return self.conn.execute("SELECT MIN(mean_sec) FROM records WHERE workload_id=? AND target=?"
                                 " AND tvm_version=?", (wid, self.target_key, self.version)).fetchone()[0]

    def best_records(self, wid: int, top_k: int) -> list[tuple[int, TuningRecord, float]]:
        """The ``top_k`` fastest records of workload ``wid`` here: (record id, record, mean seconds)."""
        workload = self.workload_by_id(wid)
        rows = self.conn.execute(
            "SELECT id, record_json, mean_sec FROM records WHERE workload_id=? AND target=? AND tvm_version=?"
            " AND mean_sec IS NOT NULL ORDER BY mean_sec LIMIT ?",
            (wid, self.target_key, self.version, top_k)).fetchall()
        return [(rid, TuningRecord.from_json(json.loads(text), workload), sec) for rid, text, sec in rows]

    def rerank_candidates(self, wid: int, top_k: int) -> list[tuple[int, TuningRecord]]:
        """What ``db rerank`` times in a run: the workload's best (``BEST_FIRST``: an earlier rerank's choice
        if any) first, then its default schedule's record (source 'default', tune's seed: often slower alone
        than the searched ones, sometimes faster in the run), then the fastest of the records timed with cold
        caches (source 'cold': ``tune --cache-flush``, ``db import --cold``; their times do not compare with
        warm ones), then the fastest measured alone, ``top_k`` in all: (record id, record)."""
        workload = self.workload_by_id(wid)
        mine = "workload_id=? AND target=? AND tvm_version=? AND mean_sec IS NOT NULL"
        firsts = [f"ORDER BY {BEST_FIRST}", "AND source='default' ORDER BY mean_sec",
                  "AND source='cold' ORDER BY mean_sec"]  # each picks one record, put first in this order
        order = "".join(f"id = (SELECT id FROM records WHERE {mine} {first} LIMIT 1) DESC, " for first in firsts)
        rows = self.conn.execute(f"SELECT id, record_json FROM records WHERE {mine} ORDER BY {order}mean_sec LIMIT ?",
                                 (wid, self.target_key, self.version) * (1 + len(firsts)) + (top_k,)).fetchall()
        return [(rid, TuningRecord.from_json(json.loads(text), workload)) for rid, text in rows]

    def set_run_secs(self, wid: int, secs: dict[int, float]) -> None:
        """The times of a rerank: ``secs`` {record id: seconds a call in a whole run}; every other record of the
        workload loses any earlier run time (one sitting's times compare, two sittings' do not)."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("UPDATE records SET run_sec=NULL WHERE workload_id=? AND target=? AND tvm_version=?",
                          (wid, self.target_key, self.version))
        self.conn.executemany("UPDATE records SET run_sec=? WHERE id=?", [(s, rid) for rid, s in secs.items()])
        self.conn.execute("COMMIT")

    def contested_workloads(self) -> list[int]:
        """Workloads with two or more measured records here (the ones a re-measure can re-rank)."""
        rows = self.conn.execute("SELECT workload_id FROM records WHERE target=? AND tvm_version=?"
                                 " AND mean_sec IS NOT NULL GROUP BY workload_id HAVING COUNT(*) >= 2"
                                 " ORDER BY workload_id", (self.target_key, self.version)).fetchall()
        return [wid for (wid,) in rows]

    def set_mean_sec(self, record_id: int, sec: float | None) -> None:
        """A record's time after it was measured again (None: it failed to run again)."""
        self.conn.execute("UPDATE records SET mean_sec=? WHERE id=?", (sec, record_id))

    def note_failure(self, wid: int, stage: str, error: str) -> None:
        self.conn.execute("INSERT INTO failures (workload_id, target, stage, error, created)"
                          " VALUES (?, ?, ?, ?, ?)", (wid, self.target_key, stage, error[:4000], time.time()))

    def foreign_records(self, wid: int) -> int:
        """Records of workload ``wid`` made for another target or TVM version (never applied)."""
        return self.conn.execute("SELECT COUNT(*) FROM records WHERE workload_id=? AND NOT"
                                 " (target=? AND tvm_version=?)",
                                 (wid, self.target_key, self.version)).fetchone()[0]

    def sibling_records(self, wid: int) -> list[tuple[str, str]]:
        """The best record of workload ``wid`` made for each other target on this TVM version (another CPU
        class: imported reference records), fastest first: [(target JSON, record JSON)]."""
        return self.conn.execute(
            "SELECT target, record_json FROM (SELECT target, record_json, mean_sec, ROW_NUMBER() OVER"
            f" (PARTITION BY target ORDER BY {BEST_FIRST}) AS rank FROM records WHERE workload_id=? AND"
            " target != ? AND tvm_version=? AND mean_sec IS NOT NULL) WHERE rank = 1 ORDER BY mean_sec",
            (wid, self.target_key, self.version)).fetchall()

    def donors(self, model: str, batch: int, task_name: str, resolution: int, exclude_wid: int | None,
               limit: int = 2) -> list[Donor]:
        """The best measured record of ``task_name`` at each other resolution of (model, batch), nearest first."""
        rows = self.conn.execute(
            "SELECT t.workload_id, t.resolution, MIN(r.mean_sec), r.record_json FROM tasks t"
            " JOIN records r ON r.workload_id = t.workload_id AND r.target = t.target"
            " AND r.tvm_version = t.tvm_version"
            " WHERE t.model=? AND t.batch=? AND t.task_name=? AND t.target=? AND t.tvm_version=?"
            " AND t.resolution != ? AND r.mean_sec IS NOT NULL AND t.workload_id IS NOT ?"
            " GROUP BY t.workload_id ORDER BY ABS(t.resolution - ?), t.resolution DESC LIMIT ?",
            (model, batch, task_name, self.target_key, self.version, resolution, exclude_wid, resolution,
             limit)).fetchall()
        return [Donor(wid, res, secs, text) for wid, res, secs, text in rows]
