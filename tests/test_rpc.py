"""Remote measurement through a real TVM RPC tracker and two servers on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tunekit import database

KEY = "tunekit-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _alive_in_groups(groups: set[int]) -> list[int]:
    """Pids of the processes (zombies aside) in any of these process groups (Linux /proc)."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            alive.append(int(entry))
    return alive


@pytest.fixture
def tracker():
    """A tracker and two rpc_servers registered under KEY; all stopped afterwards.

    Each runs in its own process group, stopped as a group: TVM's servers fork popen workers,
    which a plain terminate() would leave running, orphaned."""
    from tunekit.rpc import check_tracker

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        assert _wait_for(up), "tracker did not start"
        for _ in range(2):
            server_port = _free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", KEY,
                 "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

        def registered():
            try:
                return check_tracker("127.0.0.1", port, KEY) == 2
            except Exception:
                return False

        assert _wait_for(registered), "servers did not register"
        yield port
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        groups = {proc.pid for proc in procs}
        assert _wait_for(lambda: not _alive_in_groups(groups), 10), f"left running: {_alive_in_groups(groups)}"


def test_tune_over_rpc(cli, tmp_path, tracker):
    db = tmp_path / "rpc.db"
    result = cli("tune", "--model", "tinyconv", "--res", "32", "--trials-per-task", "1", "--db", db,
                 "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", KEY)
    assert result.exit_code == 0, result.output
    (row,) = database.tuned_summary(db)
    assert row["tuned_tasks"] == row["tasks"] == 7
    assert database.stats(db)["failed_records"] == 0


def test_wrong_key(cli, tmp_path, tracker):
    result = cli("tune", "--model", "tinyconv", "--res", "32", "--db", tmp_path / "x.db",
                 "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", "nope")
    assert result.exit_code == 2
    assert f"has no server with key 'nope' (keys registered: {KEY})" in result.stderr


def test_unreachable_tracker(cli, tmp_path):
    port = _free_port()
    result = cli("tune", "--model", "tinyconv", "--res", "32", "--db", tmp_path / "x.db",
                 "--rpc", f"127.0.0.1:{port}", "--rpc-key", KEY)
    assert result.exit_code == 2
    assert f"no RPC tracker answers at 127.0.0.1:{port}; start one with" in result.stderr
