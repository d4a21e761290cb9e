"""Probes of the machine that never raise."""

from __future__ import annotations


def has_cuda() -> bool:
    """Whether a CUDA GPU is usable by TVM here."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no driver, no runtime: just "no"
        return False
