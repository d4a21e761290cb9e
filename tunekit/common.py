"""Small helpers several modules share, each defined once: file names, hashing, atomic JSON, the seeded
sample input, and sending TVM's native stderr to a log."""

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
