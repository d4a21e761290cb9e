"""A user's mistakes across every command: one line on stderr, exit code 2, no traceback, and no
file that existed before is changed (reads never write)."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest


def _snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files a careless user might point tunekit at, plus one good artifact directory."""
    from click.testing import CliRunner

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("bad")
    (root / "bad.json").write_text("{not json")
    (root / "notvm.json").write_text(json.dumps({"name": "x", "kind": "llvm"}))
    (root / "badcores.json").write_text(json.dumps({"tvm": {"kind": "llvm"}, "threads": "many"}))
    (root / "empty.onnx").write_bytes(b"")
    (root / "garbage.onnx").write_bytes(os.urandom(300))
    (root / "empty.db").write_bytes(b"")
    with sqlite3.connect(root / "other.db") as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    (root / "garbage-out").mkdir()
    (root / "garbage-out" / "manifest.json").write_text("{{{")
    (root / "afile").write_text("not a directory")
    (root / "adir.onnx").mkdir()
    (root / "notes.txt").write_text("hello")
    (root / "tvmjson").mkdir()
    art = root / "art"
    result = CliRunner().invoke(main, ["build", "--model", "tinyconv", "--res", "32", "--out", str(art),
                                       "--db", str(root / "none.db")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (root / "none.db").unlink(missing_ok=True)
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "manifest.json").write_text((art / "manifest.json").read_text())
    so = (art / "tinyconv-32x32-b1.host.so").read_bytes()
    (truncated / "tinyconv-32x32-b1.host.so").write_bytes(so[: len(so) // 3])
    return root


TINY = ["--model", "tinyconv", "--res", "32"]

CASES = [
    (["tune", *TINY, "--target", "{root}/bad.json"], "not valid JSON"),
    (["tune", *TINY, "--target", "{root}/notvm.json"], 'needs a "tvm" key'),
    (["tune", *TINY, "--target", "{root}/badcores.json"], "'threads' must be a whole number"),
    (["build", *TINY, "--target", "{root}/missing.json", "--out", "{root}/o1"], "does not exist"),
    (["build", *TINY, "--target", "{root}/adir.onnx", "--out", "{root}/o1"], "is a directory"),
    (["tune", *TINY, "--target", '{{"kind": "llvm", "mcpu": "notacpu"}}', "--dry-run"], "LLVM knows no CPU 'notacpu'"),
    (["tune", *TINY, "--target", '["llvm"]'], "must be a TVM target dict"),
    (["tune", *TINY, "--target", "nosuchpreset"], "unknown target 'nosuchpreset'; choose from"),
    (["export", *TINY, "--out", "/proc/tunekit-x"], "/proc/tunekit-x"),
    (["build", *TINY, "--out", "/proc/tunekit-x"], "/proc/tunekit-x"),
    (["export", *TINY, "--out", "{root}/garbage-out"], "not a tunekit export manifest"),
    (["build", *TINY, "--out", "{root}/garbage-out"], "not tunekit's artifact manifest"),
    (["export", *TINY, "--out", "{root}/afile"], "is a file"),
    (["flops", "--onnx", "{root}/empty.onnx", "--res", "32"], "not an ONNX model (no graph, 0 bytes)"),
    (["flops", "--onnx", "{root}/garbage.onnx", "--res", "32"], "not a readable ONNX model"),
    (["flops", "--onnx", "{root}/adir.onnx", "--res", "32"], "is a directory"),
    (["db", "list", "--db", "{root}/empty.db"], "not a tunekit database (empty file)"),
    (["db", "list", "--db", "{root}/other.db"], "not a tunekit database"),
    (["db", "stats", "--db", "{root}/other.db"], "not a tunekit database"),
    (["db", "export", "--db", "{root}/other.db", "{root}/exp"], "not a tunekit database"),
    (["db", "list", "--db", "{root}/tvmjson"], "is a directory"),
    (["tune", *TINY, "--db", "{root}/other.db", "--dry-run"], "not a tunekit database; it is left untouched"),
    (["db", "import", "--db", "{root}/new.db", "{root}/tvmjson"], "not a TVM JSON database"),
    (["db", "rerank", *TINY, "--db", "{root}/missing.db"], "no tuning database at"),
    (["db", "rerank", *TINY, "--db", "{root}/other.db"], "not a tunekit database"),
    (["flops", "--model", "tinyconv", "--res", "224x160"], "non-square resolutions (224x160)"),
    (["flops", "--model", "nosuchmodel", "--res", "224"], "unknown model 'nosuchmodel'"),
    (["bench", *TINY, "--backends", "tuned,tensorrt"], "unknown backend 'tensorrt'"),
    (["bench", *TINY, "--output", "{root}/r.txt"], "name a .json, .md or .csv file"),
    (["bench", *TINY, "--artifacts", "{root}/truncated", "--backends", "tuned"], "sha256 does not match"),
    (["compare", "{root}/notes.txt", "{root}/notes.txt"], "not a `tunekit bench"),
    (["compare", "{root}/bad.json", "{root}/bad.json", "--max-regression", "lots"], "expected a percentage"),
    (["compare", "{root}/bad.json", "{root}/bad.json", "--max-regression", "5"], "ambiguous; write 5% for 5 percent"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input(world, cli, args, message):
    before = _snapshot(world)
    result = cli(*[a.format(root=world) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert message in errors[0]
    after = _snapshot(world)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that existed changed
    assert not {p for p in after if p not in before and not p.startswith(str(world / "o1"))} - \
        {p for p in after if p.endswith("new.db")}  # no stray files (an empty new db is the user's ask)


def test_ctrl_c_during_build_leaves_no_partial_library(world, tmp_path):
    out = tmp_path / "art"
    proc = subprocess.Popen([sys.executable, "-m", "tunekit.cli", "build", "--model", "resnet18", "--res", "64",
                             "--out", str(out), "--db", str(tmp_path / "n.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not out.exists():
        time.sleep(0.2)
    time.sleep(3)  # inside TVM's compile
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert not [p for p in out.iterdir() if p.suffix == ".so" or ".tmp" in p.name]
