"""Small helpers several modules share, each defined once: file names, hashing, atomic JSON, the seeded
sample input, sending TVM's native stderr to a log, and keeping a Ctrl-C that TVM swallows."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"  # the file that describes an export or build directory


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a crash never leaves half a file."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=2)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def sample_input(shape, seed: int = 0) -> np.ndarray:
    """The seeded standard-normal float32 input exports and builds are checked on."""
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


@contextlib.contextmanager
def native_stderr_to(log_path: Path):
    """Send file descriptor 2 to ``log_path`` while TVM works.

    TVM's C++ side warns straight to fd 2 ("Unknown schedule rule ...") and the
    builder/runner workers inherit it; that chatter belongs in the log, not the
    terminal. Python's own ``sys.stderr`` object is left alone.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def interrupts_kept():
    """A Ctrl-C inside the block raises KeyboardInterrupt as usual, and also at the block's end when TVM
    swallowed it: one raised inside a Python callback that C++ called (an op's legalisation, say) is caught
    there, and the pass carries on with a different module (resnet18 built with 21 tasks instead of 20, and
    exit 0). Yields a check to call between steps, which raises KeyboardInterrupt at once if one came. Only
    in the main thread, where signal handlers live."""
    import signal
    import threading

    hit = []

    def check():
        if hit:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check
        return

    def handler(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield check
    except BaseException:  # an error TVM made of the interrupt is the interrupt
        if hit:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if hit:
        raise KeyboardInterrupt
