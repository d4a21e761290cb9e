"""The tuning engine with real MetaSchedule runs on a tiny conv net: records, resume,
crash safety, concurrent writers, target isolation, export to stock TVM."""

import json
import os
import re
import signal
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from tunekit import database, frontend
from tunekit.keys import Key
from tunekit.targets import resolve_target

TUNEKIT = [sys.executable, "-m", "tunekit.cli"]
TINY = ["--model", "tinyconv", "--res", "32", "--trials-per-task", "2"]


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    """tinyconv at 32x32, 2 trials per task, tuned once for the module."""
    from click.testing import CliRunner

    from tunekit.cli import main

    path = tmp_path_factory.mktemp("tuned") / "t.db"
    result = CliRunner().invoke(main, ["tune", *TINY, "--db", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path, result.output


def _copy(src, dst):
    """Copy a WAL-mode database (the file alone may not hold the latest commits)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def _records(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]


def test_records_land(tuned_db):
    path, output = tuned_db
    # NHWC: 3 convs, the mean and the fc searched; the input's transpose and the output's reshape not
    assert "7 tasks over 1 resolution(s) -> 7 unique (5 to search, 2 with one schedule)" in output
    assert "8 weight-only tasks" in output  # NHWC: the weights' transposes to HWIO, Winograd's kernel transforms
    assert "0 trials reused from the database, 12 new" in output
    assert _records(path) == 12  # 5 searched tasks x 2 + 2 single-schedule tasks (NHWC's transposes) x 1
    (row,) = database.tuned_summary(path)
    assert (row["model"], row["resolution"], row["tuned_tasks"], row["tasks"]) == ("tinyconv", 32, 7, 7)
    assert row["est_ms"] > 0
    assert row["target"].startswith("llvm/")


def test_a_plain_copy_after_tune_holds_every_record(tuned_db, tmp_path):
    # the reference recipe copies the database with cp before pruning: nothing may be left in the WAL
    path, _ = tuned_db
    copy = tmp_path / "c.db"
    shutil.copyfile(path, copy)
    assert _records(copy) == 12


def test_resume_adds_nothing_to_finished_tasks(tuned_db, cli):
    path, _ = tuned_db
    before = _records(path)
    result = cli("tune", *TINY, "--db", path)
    assert result.exit_code == 0
    assert "12 trials reused from the database, 0 new; 7/7 tasks already done" in result.output
    assert _records(path) == before


def test_records_of_other_targets_and_versions_are_never_applied(tuned_db):
    path, _ = tuned_db
    graph = frontend.onnx_graph(Key("tinyconv", 32, 32), model="tinyconv")
    host = resolve_target("host").tvm_target()
    tasks, _ = frontend.tasks_of(graph, host)
    conv = next(t for t in tasks if "conv2d" in t.name)

    same = database.open_database(path, host)
    assert same.query_tuning_record(conv.mod, host, "main") is not None
    other = resolve_target('{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}').tvm_target()
    foreign = database.open_database(path, other)
    assert foreign.query_tuning_record(conv.mod, other, "main") is None
    assert foreign.get_top_k(foreign.commit_workload(conv.mod), 5) == []
    assert foreign.foreign_records(foreign.workload_id(conv.mod)) == 2

    copy = _copy(path, path.with_name("old.db"))
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE records SET tvm_version = '0.20.0'")
    aged = database.open_database(copy, host)
    assert aged.query_tuning_record(conv.mod, host, "main") is None
    assert len(aged) == 0


def test_export_applies_in_stock_tvm(tuned_db, tmp_path, cli):
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    path, _ = tuned_db
    result = cli("db", "export", "--db", path, "--format", "tvm-json", "--target", "host", tmp_path / "tvm")
    assert result.exit_code == 0, result.output
    assert "wrote 12 records of 7 workloads" in result.output
    stock = ms.database.JSONDatabase(work_dir=str(tmp_path / "tvm"))
    host = resolve_target("host").tvm_target()
    graph = frontend.onnx_graph(Key("tinyconv", 32, 32), model="tinyconv")
    prepared = frontend.prepare(frontend.to_relax(graph)[0], host)
    tasks, _ = frontend.runtime_tasks(prepared, host)
    with host, stock:
        applied = relax.transform.MetaScheduleApplyDatabase()(prepared)
    for task in tasks:
        assert applied[task.name].attrs.get("tirx.is_scheduled"), task.name

    # and back: import into a fresh tunekit database
    result = cli("db", "import", "--db", tmp_path / "back.db", tmp_path / "tvm")
    assert "imported 12 records" in result.output
    assert _records(tmp_path / "back.db") == 12


def test_prune_keeps_budget(tuned_db, cli, tmp_path):
    path, _ = tuned_db
    copy = _copy(path, tmp_path / "p.db")
    result = cli("db", "prune", "--db", copy, "--top-k", "1")
    assert result.exit_code == 0 and "deleted 5 records" in result.output
    assert _records(copy) == 7
    result = cli("tune", *TINY, "--db", copy)
    assert "0 new; 7/7 tasks already done" in result.output


def test_curve_replays_the_records_in_order(tuned_db, cli, tmp_path):
    path, _ = tuned_db
    result = cli("db", "curve", "--model", "tinyconv", "--res", "32", "--db", path, "--json",
                 "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    curve = json.loads(result.output)
    (row,) = database.tuned_summary(path)
    est = curve["est_ms"]["32"]
    assert curve["trials"] == list(range(1, _records(path) + 1))  # every stored trial, failed ones too
    assert est[-1] == pytest.approx(row["est_ms"])  # ends where `db list` is
    assert est[0] >= est[-1] and sorted(curve["seconds"]) == curve["seconds"]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    table = cli("db", "curve", "--model", "tinyconv", "--res", "32", "--db", path, "--points", "3")
    assert table.exit_code == 0 and "against the 12 trials" in " ".join(table.output.split())
    # a resolution never tuned: one line, exit 2
    result = cli("db", "curve", "--model", "tinyconv", "--res", "48", "--db", path)
    assert result.exit_code == 2 and "tune it first" in result.stderr


def _start(args, db):
    return subprocess.Popen([*TUNEKIT, "tune", *args, "--db", str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_kill_9_then_resume(tmp_path):
    db = tmp_path / "k.db"
    proc = _start(TINY, db)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db.exists() and _records(db) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "tuning finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    survived = _records(db)
    assert survived >= 2
    # every surviving record is readable by MetaSchedule
    host = resolve_target("host").tvm_target()
    assert len(database.open_database(db, host).get_all_tuning_records()) == survived
    resumed = subprocess.run([*TUNEKIT, "tune", *TINY, "--db", str(db)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{survived} trials reused" in resumed.stdout
    assert _records(db) == 12


def test_two_writers_at_once(tmp_path):
    db = tmp_path / "c.db"
    procs = [_start(["--model", "tinyconv", "--res", res, "--trials-per-task", "1"], db) for res in ("32", "40")]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    rows = {r["resolution"]: r for r in database.tuned_summary(db)}
    assert set(rows) == {32, 40}
    assert all(r["tuned_tasks"] == r["tasks"] for r in rows.values())


@pytest.mark.parametrize("args, message", [
    (["--model", "tinyconv", "--res", "32", "--target", "pentium"], "unknown target 'pentium'; choose from:"),
    (["--model", "tinyconv", "--res", "32", "--target", '{"kind": "nope"}'], "TVM rejects"),
    (["--model", "tinyconv", "--res", "32", "--trials", "2"], "--trials 2 is less than the 5 tasks"),
    (["--model", "tinyconv", "--res", "32", "--rpc", "127.0.0.1"], "expected HOST:PORT"),
])
def test_bad_tune_input(cli, tmp_path, args, message):
    result = cli("tune", *args, "--db", tmp_path / "x.db")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_bad_onnx_for_tune(cli, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("garbage")
    result = cli("tune", "--onnx", junk, "--res", "32", "--db", tmp_path / "x.db")
    assert result.exit_code == 2 and "not a readable ONNX model" in result.stderr


def test_db_commands_without_db(cli, tmp_path):
    result = cli("db", "list", "--db", tmp_path / "none.db")
    assert result.exit_code == 2 and "no tuning database" in result.stderr
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite " * 100)
    result = cli("db", "list", "--db", bad)
    assert result.exit_code == 2 and "not a tunekit database" in result.stderr


def test_dry_run_plans_without_tuning(cli, tmp_path):
    db = tmp_path / "d.db"
    result = cli("tune", "--model", "tinyconv", "--res", "32,40", "--trials", "90", "--db", db, "--dry-run")
    assert result.exit_code == 0, result.output
    # 2 x 7 tasks; the fc, its flatten and nothing else are shared between the resolutions
    assert "14 tasks over 2 resolution(s) -> 12 unique (9 to search, 3 with one schedule)" in result.output
    # transfer (the default): the anchor (40, the middle) gets the full share, the other tasks a quarter
    assert "transfer: anchor 40 first, 5 tasks x 15 trials; the other 4 tasks x 3 trials" in result.output
    assert "budget 15 trials per task (3 away from the anchor)" in result.output
    independent = cli("tune", "--model", "tinyconv", "--res", "32,40", "--trials", "90", "--db", db, "--dry-run",
                      "--no-transfer")
    assert "budget 10 trials per task: 0 trials reused from the database, 93 new" in independent.output  # 9 x 10 + 3
    assert "transfer: anchor" not in independent.output
    bad = cli("tune", "--model", "tinyconv", "--res", "32,40", "--anchor", "48", "--db", db, "--dry-run")
    assert bad.exit_code == 2 and "--anchor 48 is not one of the resolutions" in bad.output
    assert _records(db) == 0
    # planning registered the 12 workloads and tasks: a plain copy of the file holds them (no WAL left)
    shutil.copyfile(db, tmp_path / "copy.db")
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM workloads").fetchone()[0] == 12


def test_only_new_plans_the_tasks_the_database_has_nothing_for(tuned_db, cli, tmp_path):
    # 32 is tuned; at 32,40 only 40's tasks are new (the fc and its flatten are shared with 32)
    db = _copy(tuned_db[0], tmp_path / "c.db")
    args = ["tune", "--model", "tinyconv", "--res", "32,40", "--trials-per-task", "3", "--db", db, "--dry-run"]
    everything = cli(*args)
    assert "14 tasks over 2 resolution(s) -> 12 unique" in everything.output
    only = cli(*args, "--only-new")
    assert only.exit_code == 0, only.output
    assert "14 tasks over 2 resolution(s) -> 5 unique (4 to search, 1 with one schedule)" in only.output
    assert "0 trials reused from the database" in only.output and "0/5 tasks already done" in only.output
    assert _records(db) == 12


def test_search_population_follows_budget():
    from tunekit.tuning import search_strategy

    assert search_strategy(1).population_size == 64
    assert search_strategy(16).population_size == 128
    assert search_strategy(64).population_size == 512  # MetaSchedule's own default
    assert search_strategy(1000).population_size == 512


def test_build_after_a_complete_tune_has_no_fallbacks(tuned_db, cli, tmp_path):
    """Every task finds its record (tune and build prepare alike), and the tuned library, with its
    weights packed into the tuned layouts at build time, still matches PyTorch."""
    path, _ = tuned_db
    result = cli("build", "--model", "tinyconv", "--res", "32", "--db", path, "--out", tmp_path / "art")
    assert result.exit_code == 0, result.output
    assert "32x32: 7 tuned, 0 transferred, 0 fallback" in result.output
    (entry,) = json.loads((tmp_path / "art" / "manifest.json").read_text())["artifacts"]
    assert (entry["tuned"], entry["fallback"], entry["verification"], entry["layout"]) == (7, 0, "verified", "NHWC")


def test_a_target_in_nchw_tunes_and_builds_in_nchw(cli, tmp_path):
    """The layout is the target's: a preset with "layout": "NCHW" prepares NCHW tasks (other workloads than
    NHWC's, so the NHWC records do not apply), and its build after its tune has 0 fallbacks too."""
    from tunekit.targets import detect_host

    host = detect_host()
    preset = tmp_path / "nchw.json"
    preset.write_text(json.dumps({"name": "host-nchw", "tvm": host.tvm, "threads": host.threads, "layout": "NCHW"}))
    db = tmp_path / "n.db"
    result = cli("tune", "--model", "tinyconv", "--res", "32", "--target", preset, "--trials-per-task", 1, "--db", db)
    assert result.exit_code == 0, result.output
    result = cli("build", "--model", "tinyconv", "--res", "32", "--target", preset, "--db", db, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "32x32: 6 tuned, 0 transferred, 0 fallback" in result.output
    (entry,) = json.loads((tmp_path / "a" / "manifest.json").read_text())["artifacts"]
    assert (entry["layout"], entry["verification"]) == ("NCHW", "verified")
    # the same database holds nothing for the default (NHWC) preparation's convolutions
    result = cli("build", "--model", "tinyconv", "--res", "32", "--db", db, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "b" / "manifest.json").read_text())["artifacts"]
    assert entry["layout"] == "NHWC" and sum("conv2d" in t for t in entry["fallback_tasks"]) == 3
    # tuning the NHWC preparation into the same database: its summary counts its own 7 tasks, not both layouts'
    result = cli("tune", "--model", "tinyconv", "--res", "32", "--trials-per-task", 1, "--db", db)
    assert result.exit_code == 0, result.output
    assert re.search(r"32x32\s*│\s*7/7\s*│", result.output), result.output


def test_progress_stays_within_the_plan_and_best_candidates_are_remeasured(tuned_db):
    """Seeding measurements come out of the budget (no 'trials 81/71'), every searched task's best
    candidates are measured again, and records say how many threads measured them."""
    from tunekit.targets import default_threads

    path, output = tuned_db
    counts = [(int(a), int(b)) for a, b in re.findall(r"trials (\d+)/(\d+)", output)]
    assert counts and all(done <= total for done, total in counts)
    assert output.count("re-measured best 2:") == 5  # the 5 searched tasks, 2 records each
    with sqlite3.connect(path) as conn:
        threads = {t for (t,) in conn.execute("SELECT DISTINCT threads FROM records")}
    assert threads == {default_threads(resolve_target("host"))}


def test_a_cache_flush_takes_one_call_a_repeat():
    """MetaSchedule flushes before each repeat: a repeat of tens of calls (min_repeat_ms) would time
    them warm after one flush, and report that as cold (benchmarks/profile.py --cold did, session 10)."""
    from tunekit.tuning import Measurement

    with pytest.raises(ValueError, match="one call"):
        Measurement(cpu_cache_flush=True)
    with pytest.raises(ValueError, match="one call"):
        Measurement(number=4, min_repeat_ms=0, cpu_cache_flush=True)
    cold = Measurement(repeat=20, min_repeat_ms=0, cpu_cache_flush=True)
    assert (cold.number, cold.min_repeat_ms) == (1, 0)


def test_remeasure_puts_records_of_two_sittings_on_one_scale(tuned_db, cli, tmp_path):
    """A record whose stored time is from a faster day (here: planted, 1 ns) must not win a merge."""
    path, _ = tuned_db
    copy = _copy(path, tmp_path / "r.db")
    with sqlite3.connect(copy) as conn:
        wid, rid = conn.execute("SELECT workload_id, MIN(id) FROM records WHERE mean_sec IS NOT NULL"
                                " GROUP BY workload_id HAVING COUNT(*) >= 2 ORDER BY workload_id").fetchone()
        contested = conn.execute("SELECT COUNT(*) FROM (SELECT workload_id FROM records WHERE mean_sec IS NOT NULL"
                                 " GROUP BY workload_id HAVING COUNT(*) >= 2)").fetchone()[0]
        single = conn.execute("SELECT id, mean_sec FROM records WHERE workload_id IN (SELECT workload_id FROM"
                              " records GROUP BY workload_id HAVING COUNT(*) = 1)").fetchall()
        conn.execute("UPDATE records SET mean_sec=1e-9 WHERE id=?", (rid,))
    result = cli("db", "remeasure", "--db", copy)
    assert result.exit_code == 0, result.output
    assert f"re-measured {contested} workload(s)" in result.output
    with sqlite3.connect(copy) as conn:
        (sec,) = conn.execute("SELECT mean_sec FROM records WHERE id=?", (rid,)).fetchone()
        assert sec is not None and sec > 5e-9  # measured again (tens of ns here), not the planted 1 ns
        assert conn.execute("SELECT id, mean_sec FROM records WHERE workload_id IN (SELECT workload_id FROM"
                            " records GROUP BY workload_id HAVING COUNT(*) = 1)").fetchall() == single


def test_rerank_candidates_include_the_default_and_a_cold_schedule_however_slow_alone(tuned_db, tmp_path):
    """After the best, a rerank times the default schedule (tune's seed) and the fastest record timed with
    cold caches (source 'cold'), even when the searched records are all faster alone: the in-run race is
    where they can still win."""
    path, _ = tuned_db
    copy = _copy(path, tmp_path / "d.db")
    with sqlite3.connect(copy) as conn:
        wid, default = conn.execute("SELECT workload_id, MIN(id) FROM records WHERE source='default' AND mean_sec"
                                    " IS NOT NULL AND workload_id IN (SELECT workload_id FROM records WHERE"
                                    " mean_sec IS NOT NULL GROUP BY workload_id HAVING COUNT(*) >= 2)").fetchone()
        assert wid is not None, "tinyconv's tune left no task with a default record and another"
        conn.execute("UPDATE records SET mean_sec=1.0 WHERE id=?", (default,))  # the slowest alone by far
        (best,) = conn.execute("SELECT id FROM records WHERE workload_id=? AND id<>? AND mean_sec IS NOT NULL"
                               " ORDER BY mean_sec LIMIT 1", (wid, default)).fetchone()
        columns = [c for (_, c, *_) in conn.execute("PRAGMA table_info(records)")
                   if c not in ("id", "mean_sec", "source")]

        def planted(factor, source):  # a copy of the best, slower alone by ``factor``
            return conn.execute(f"INSERT INTO records ({', '.join(columns)}, mean_sec, source) SELECT"
                                f" {', '.join(columns)}, mean_sec * ?, ? FROM records WHERE id=?",
                                (factor, source, best)).lastrowid

        third = planted(2, "search")
        cold, slower_cold = planted(500, "cold"), planted(600, "cold")
    db = database.open_database(copy, resolve_target("host").tvm_target())
    assert [rid for rid, _ in db.rerank_candidates(wid, 4)] == [best, default, cold, third]
    assert slower_cold not in [rid for rid, _ in db.rerank_candidates(wid, 4)]
    assert [rid for rid, _ in db.rerank_candidates(wid, 1)] == [best]


def test_rerank_stores_its_times_only_when_its_choices_win_the_race(tuned_db, cli, tmp_path):
    """By default a rerank that changes a record races the build of its choices against the build before in
    fresh processes, says which won, and stores run times exactly when the choices won."""
    path, _ = tuned_db
    copy = _copy(path, tmp_path / "v.db")
    with sqlite3.connect(copy) as conn:  # the slowest record of each task planted as the fastest alone
        conn.execute("UPDATE records SET mean_sec=1e-9 WHERE id IN (SELECT (SELECT id FROM records r WHERE"
                     " r.workload_id=w.workload_id AND mean_sec IS NOT NULL ORDER BY mean_sec DESC LIMIT 1)"
                     " FROM (SELECT DISTINCT workload_id FROM records) w)")
    result = cli("db", "rerank", *TINY[:4], "--db", copy, "--top", 3, "--runs", 8, "--verify", 2)
    assert result.exit_code == 0, result.output
    with sqlite3.connect(copy) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM records WHERE run_sec IS NOT NULL").fetchone()[0]
    if int(re.search(r"; (\d+) change their record", result.output).group(1)):
        (line,) = [line for line in result.output.splitlines() if "raced against the build before" in line]
        ratio = float(re.search(r"after/before ([0-9.]+)", line).group(1))
        assert "build of the choices, to race it" in result.output
        assert line.endswith(": kept") == (ratio < 1) == (stored > 0), line
    else:  # nothing changed: no race, the times are stored
        assert "raced" not in result.output and stored > 0


def test_race_takes_fresh_processes_in_alternating_order(tmp_path, monkeypatch):
    """racing.race times A and B in turn, flipping the order every pair, and sums the pairs up."""
    from tunekit import racing

    order = []
    times = {"a": [2.0, 2.0, 2.0, 2.0], "b": [1.0, 3.0, 1.0, 1.0]}
    monkeypatch.setattr(racing, "median_ms", lambda path, entry, runs: (order.append(path), times[path].pop(0))[1])
    result = racing.race(("a", {}), ("b", {}), pairs=4, gap=0)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.pairs == [(2.0, 1.0), (2.0, 3.0), (2.0, 1.0), (2.0, 1.0)]
    assert result.ratio == 0.5 and result.wins == 3 and 0.6 < result.p < 0.7  # binomial: 3 of 4, p = 0.625


def test_a_cache_flushed_tune_stores_its_searched_records_cold_and_only_that_tune(tmp_path):
    """`tune --cache-flush` stores what it searches with source 'cold' (rerank's cold candidates); the
    job's database object, which the job's later calls share, goes back to storing 'search'."""
    import tunekit
    from tunekit import api

    job = tunekit.Job(model="tinyconv", res="32", db=tmp_path / "c.db")
    result = api.tune(job, trials_per_task=4, transfer=False, cache_flush=True)
    assert not result.interrupted
    with sqlite3.connect(tmp_path / "c.db") as conn:
        sources = {s for (s,) in conn.execute("SELECT DISTINCT source FROM records")}
    assert "cold" in sources and "search" not in sources, sources
    assert job.open_database().source == "search"


def test_import_cold_marks_the_records_cold(tuned_db, cli, tmp_path):
    """`db import --cold` stores the records with source 'cold' (what rerank looks for); a plain import 'import'."""
    path, _ = tuned_db
    assert cli("db", "export", "--db", path, "--format", "tvm-json", tmp_path / "json").exit_code == 0
    sources = {}
    for flag in ([], ["--cold"]):
        target = tmp_path / f"import{len(flag)}.db"
        result = cli("db", "import", "--db", target, *flag, tmp_path / "json")
        assert result.exit_code == 0, result.output
        with sqlite3.connect(target) as conn:
            sources[bool(flag)] = {s for (s,) in conn.execute("SELECT DISTINCT source FROM records")}
    assert sources == {False: {"import"}, True: {"cold"}}


def test_rerank_times_candidates_in_the_run_and_build_takes_the_fastest_there(tuned_db, cli, tmp_path):
    """A record planted as the fastest alone (1 ns) is timed in whole runs like the others; from then on the
    record fastest in the run is the one build (get_top_k) and prune take, whatever the times alone say."""
    from tvm.s_tir.meta_schedule.database.database import _ffi_api

    from tunekit.tuning_database import to_plain_json

    path, _ = tuned_db
    copy = _copy(path, tmp_path / "r.db")
    with sqlite3.connect(copy) as conn:
        wid, planted = conn.execute("SELECT workload_id, MAX(id) FROM records WHERE mean_sec IS NOT NULL"
                                    " GROUP BY workload_id HAVING COUNT(*) >= 2 ORDER BY workload_id").fetchone()
        conn.execute("UPDATE records SET mean_sec=1e-9 WHERE id=?", (planted,))
    result = cli("db", "rerank", *TINY[:4], "--db", copy, "--top", 2, "--runs", 8, "--verify", 0)
    assert result.exit_code == 0, result.output
    assert "build 2/2" in result.output and "tasks with two or more candidates" in result.output
    assert "raced" not in result.output

    def run_times():
        with sqlite3.connect(copy) as conn:
            return dict(conn.execute("SELECT id, run_sec FROM records WHERE workload_id=? AND run_sec IS NOT NULL",
                                     (wid,)).fetchall())

    def taken():
        db = database.open_database(copy, resolve_target("host").tvm_target())
        (record,) = db.get_top_k(db.workload_by_id(wid), 1)
        with sqlite3.connect(copy) as conn:
            rows = conn.execute("SELECT id, record_json FROM records WHERE workload_id=?", (wid,)).fetchall()
        text = json.dumps(to_plain_json(_ffi_api.TuningRecordAsJSON(record)))
        return next(rid for rid, stored in rows if stored == text)

    times = run_times()
    assert len(times) == 2 and planted in times and all(sec > 1e-7 for sec in times.values())  # timed, not 1 ns
    assert taken() == min(times, key=times.get)
    loser = max(times, key=times.get)
    with sqlite3.connect(copy) as conn:  # the other one faster in the run: build and prune follow the run
        conn.execute("UPDATE records SET run_sec=1e-9 WHERE id=?", (loser,))
    assert taken() == loser
    assert cli("db", "prune", "--db", copy, "--top-k", 1).exit_code == 0
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT id FROM records WHERE workload_id=?", (wid,)).fetchall() == [(loser,)]


def test_profile_cold_times_each_task_as_tuned_and_as_built(tuned_db):
    """benchmarks/profile.py --cold: each task's best record warm and cache-flushed, as tuned and as
    `tunekit build` builds it (the prefetch pipeline; tinyconv's weights are too small to prefetch)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile.py"  # not the stdlib's profile
    spec = importlib.util.spec_from_file_location("tunekit_profile", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    host = resolve_target("host")
    tasks, _ = frontend.tasks_of(frontend.onnx_graph(Key("tinyconv", 32, 32), model="tinyconv"), host.tvm_target(),
                                 host.conv_layout, host.conv_winograd)
    db = database.open_database(str(tuned_db[0]), host.tvm_target())
    times = script.warm_and_cold(db, tasks[:2], host)
    assert set(times) == {t.name for t in tasks[:2]}
    for warm, cold, built_warm, built_cold, prefetched in times.values():
        assert min(warm, cold, built_warm, built_cold) > 0 and prefetched is False
