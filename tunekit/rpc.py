"""Remote measurement: checks on a TVM RPC tracker before tuning relies on it."""

from __future__ import annotations

from tunekit.errors import TunekitError


def check_tracker(host: str, port: int, key: str) -> int:
    """How many servers registered under ``key`` at the tracker ``host:port``.

    Raises
    ------
    TunekitError
        The tracker is unreachable, or has no server under ``key``; the message
        says how to start or check one.
    """
    import socket

    from tvm import rpc

    how = (f"start one with `python -m tvm.exec.rpc_tracker --host {host} --port {port} --port-end {port + 1}`, and on each device "
           f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")
    try:  # TVM's own client retries for a minute; a closed port should fail at once
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise TunekitError(f"no RPC tracker answers at {host}:{port}; {how}") from None
    try:
        summary = rpc.connect_tracker(host, port).summary()
    except Exception:  # socket errors, TVM's own RPC errors
        raise TunekitError(f"no RPC tracker answers at {host}:{port}; {how}") from None
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key]
    if not servers:
        keys = sorted({str(s.get("key", "")).split(":")[-1] for s in summary.get("server_info", [])})
        raise TunekitError(f"the tracker at {host}:{port} has no server with key {key!r} "
                           f"(keys registered: {', '.join(keys) or 'none'}); {how}")
    return len(servers)
