"""Cross-resolution transfer on the tiny conv net at 32 and 48: real tuning, real builds, real runs."""

import json
import sqlite3

import numpy as np
import pytest

from tests.test_tune import _copy
from tunekit import database, frontend, transfer
from tunekit.keys import Key
from tunekit.targets import resolve_target

HOST = resolve_target("host").tvm_target()


@pytest.fixture(scope="module")
def tuned48(tmp_path_factory):
    """tinyconv tuned at 48 only, 3 trials per task."""
    from click.testing import CliRunner

    from tunekit.cli import main

    path = tmp_path_factory.mktemp("xfer") / "48.db"
    result = CliRunner().invoke(main, ["tune", "--model", "tinyconv", "--res", "48", "--trials-per-task", "3",
                                       "--db", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def _tasks(side):
    tasks, _ = frontend.tasks_of(frontend.onnx_graph(Key("tinyconv", side, side), model="tinyconv"), HOST)
    return {t.name: t for t in tasks}


def _run(mod, args):
    import tvm

    lib = tvm.compile(mod, target=HOST)
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _same_results(task_mod, scheduled_mod):
    """Run the scheduled function and the plain one on the same random inputs."""
    from tvm.s_tir import meta_schedule as ms

    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in info.shape]).astype(info.dtype)
            for info in ms.arg_info.ArgInfo.from_entry_func(task_mod, remove_preproc=False)]
    want = _run(task_mod, [a.copy() for a in args])
    got = _run(scheduled_mod, [a.copy() for a in args])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_refit_keeps_inner_tiles_that_divide():
    assert transfer.refit([7, 1, 2, 8], 8 * 2 * 5) == [5, 1, 2, 8]
    assert transfer.refit([1, 1, 4, 16], 24) == [1, 1, 2, 12]
    assert transfer.refit([2, 16], 32) == [2, 16]
    assert transfer.refit([3, 3], 7) == [7, 1]


def test_tune_with_transfer_measures_correct_adapted_candidates(tuned48, cli, tmp_path):
    path = _copy(tuned48, tmp_path / "t.db")
    result = cli("tune", "--model", "tinyconv", "--res", "32,48", "--anchor", "48", "--trials-per-task", "3",
                 "--db", path)
    assert result.exit_code == 0, result.output
    assert "seeded: from 48:" in result.output
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT r.workload_id, r.record_json, r.mean_sec, t.task_name FROM records r JOIN tasks t"
                            " ON t.workload_id = r.workload_id WHERE r.source = 'transfer' AND t.resolution = 32"
                            ).fetchall()
    assert len(rows) >= 3 and all(mean is not None and mean > 0 for _, _, mean, _ in rows)
    db = database.open_database(path, HOST)
    tasks = _tasks(32)
    from tvm.s_tir import Schedule
    from tvm.s_tir.meta_schedule.database import TuningRecord

    for wid, text, _, name in rows:
        record = TuningRecord.from_json(json.loads(text), db.workload_by_id(wid))
        sch = Schedule(tasks[name].mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        _same_results(tasks[name].mod, sch.mod)
    listed = cli("db", "list", "--db", path)
    row32 = next(line for line in listed.output.splitlines() if "│  32 │" in line or "| 32 |" in line)
    assert int(row32.split("│")[8].strip()) == len(rows)  # the "from transfer" column


def test_no_transfer_tunes_independently(tuned48, cli, tmp_path):
    path = _copy(tuned48, tmp_path / "n.db")
    result = cli("tune", "--model", "tinyconv", "--res", "32,48", "--trials-per-task", "2", "--no-transfer",
                 "--db", path)
    assert result.exit_code == 0, result.output
    assert "from 48" not in result.output and "transfer: anchor" not in result.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM records WHERE source = 'transfer'").fetchone()[0] == 0


def test_zero_search_build_uses_adapted_schedules(tuned48, cli, tmp_path):
    result = cli("build", "--model", "tinyconv", "--res", "32", "--db", tuned48, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "a" / "manifest.json").read_text())["artifacts"]
    # the matmul and reshape tasks are the same workload at both sizes: tuned; the convs, the mean and the
    # input's transpose (NHWC): transferred
    assert entry["tuned"] == 2 and entry["transferred"] == 5 and entry["fallback"] == 0
    assert set(entry["transferred_from"].values()) == {48}
    assert entry["verification"] == "verified"  # against PyTorch
    result = cli("build", "--model", "tinyconv", "--res", "32", "--db", tuned48, "--out", tmp_path / "b",
                 "--no-transfer")
    assert "2 tuned, 0 transferred, 5 fallback" in result.output


def test_a_trace_that_cannot_be_adapted_is_skipped_with_a_reason(tuned48, tmp_path):
    db = database.open_database(_copy(tuned48, tmp_path / "s.db"), HOST)
    tasks48, tasks32 = _tasks(48), _tasks(32)
    (mean,) = db.donors("tinyconv", 1, "mean", 32, None, limit=1)
    with pytest.raises(transfer.TransferSkipped, match="design space"):
        transfer.adapt(transfer.donor_trace(db, mean), tasks32["fused_conv2d_add1_relu1"].mod, HOST)
    # through candidates(): a reason, never an exception
    db.conn.execute("UPDATE tasks SET task_name = 'fused_conv2d_add1_relu1' WHERE task_name = 'mean'"
                    " AND resolution = 48")
    adapted, skipped = transfer.candidates(db, tasks32["fused_conv2d_add1_relu1"].mod, HOST, "tinyconv", 1,
                                           "fused_conv2d_add1_relu1", 32, None)
    assert skipped and "design space" in skipped[0]
    assert len(tasks48) == 7


def _another_class(same_isa: bool) -> str:
    """An LLVM mcpu other than the host's, of the host's vector ISA or of another one."""
    import tvm

    from tunekit.fallback import vector_isa

    isa = vector_isa(HOST)
    for mcpu in ("skylake-avx512", "znver4", "haswell", "znver1"):
        if mcpu != str(HOST.attrs["mcpu"]):
            other = vector_isa(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
            if (other == isa) == same_isa:
                return mcpu
    raise AssertionError("no such mcpu")


def test_records_of_a_sibling_class_seed_the_search_and_build_verified(tuned48, cli, tmp_path):
    """Records moved to two other CPU classes (as `db import` of their reference sets leaves them): the one of
    the host's vector ISA seeds every searchable task, measured here; the other ISA's is never used."""
    path = _copy(tuned48, tmp_path / "sib.db")
    host = json.loads(database.target_key(HOST))
    sibling, alien = _another_class(True), _another_class(False)
    with sqlite3.connect(path) as conn:
        tuned = {wid for (wid,) in conn.execute("SELECT DISTINCT workload_id FROM records WHERE mean_sec IS NOT NULL")}
        conn.execute("UPDATE records SET target = ?", (json.dumps({**host, "mcpu": sibling}, sort_keys=True),))
        conn.execute("INSERT INTO records (workload_id, target, tvm_version, record_json, mean_sec, source, created)"
                     " SELECT workload_id, ?, tvm_version, record_json, mean_sec / 10, 'import', created FROM records",
                     (json.dumps({**host, "mcpu": alien}, sort_keys=True),))
        conn.execute("DELETE FROM pruned")
    result = cli("tune", "--model", "tinyconv", "--res", "48", "--trials-per-task", "2", "--db", path)
    assert result.exit_code == 0, result.output
    assert f"from llvm/{sibling}/" in result.output and f"llvm/{alien}/" not in result.output
    with sqlite3.connect(path) as conn:
        seeded = conn.execute("SELECT DISTINCT workload_id FROM records WHERE source = 'sibling' AND target = ?",
                              (database.target_key(HOST),)).fetchall()
        assert conn.execute("SELECT COUNT(*) FROM records WHERE source = 'sibling' AND mean_sec IS NULL"
                            ).fetchone()[0] == 0
    # sibling records are measured here for workloads tuned before (single-schedule tasks are not seeded)
    assert len(seeded) >= 3 and {wid for (wid,) in seeded} <= tuned
    result = cli("build", "--model", "tinyconv", "--res", "48", "--db", path, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "a" / "manifest.json").read_text())["artifacts"]
    assert entry["fallback"] == 0 and entry["verification"] == "verified"
