"""Export one static-shape ONNX file per resolution, each checked against its reference.

Zoo models are traced from PyTorch and compared with the PyTorch output; a
user's ONNX model with dynamic H/W is specialised per resolution and compared
with the original graph run at that size. ``manifest.json`` beside the files
says what each one is.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from tunekit import onnxutil
from tunekit.common import MANIFEST, sample_input, sha256, write_json
from tunekit.errors import ExportError
from tunekit.keys import Key, model_name_for

OPSET = 17
# Outputs must agree within ATOL + RTOL * max|reference| (float32 reassociation in
# another runtime; random-init ResNets produce logits in the hundreds).
ATOL = 1e-4
RTOL = 1e-4


@dataclass(frozen=True)
class ExportResult:
    """One exported file and how well it matched its reference."""

    key: Key
    path: Path
    max_abs_diff: float
    tolerance: float
    inputs: list[onnxutil.TensorInfo]
    outputs: list[onnxutil.TensorInfo]

    def to_json(self) -> dict:
        return {"key": str(self.key), "model": self.key.model, "resolution": [self.key.height, self.key.width],
                "batch": self.key.batch, "file": self.path.name, "sha256": sha256(self.path),
                "inputs": [i.to_json() for i in self.inputs], "outputs": [o.to_json() for o in self.outputs],
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance}


def torch_to_onnx(model, key: Key) -> onnx.ModelProto:
    """Trace a PyTorch model at ``key``'s input shape into an ONNX graph (opset ``OPSET``)."""
    import torch

    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(key.input_shape),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _compare(key: Key, got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    if got.shape != want.shape:
        raise ExportError(f"{key}: output shape {got.shape} differs from reference {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    tolerance = ATOL + RTOL * float(np.max(np.abs(want)))
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"{key}: exported model differs from reference by {diff:.3g} (tolerance {tolerance:.3g})")
    return diff, tolerance


def _save_checked(graph: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(graph, str(tmp))
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        tmp.unlink()
        raise ExportError(f"{path.name} fails the ONNX checker: {exc}") from None
    os.replace(tmp, path)


def export_zoo(name: str, sides: Iterable[int], out_dir: str | Path, batch: int = 1,
               weights: str | Path | None = None,
               on_done: Callable[[ExportResult], None] | None = None) -> list[ExportResult]:
    """Export zoo model ``name`` at each side in ``sides`` into ``out_dir``.

    Each file is checked by the ONNX checker and run on a seeded random input;
    its output must match PyTorch's within ``ATOL + RTOL * max|reference|``.

    Raises
    ------
    SpecError, TunekitError
        Unknown model or unusable weights.
    ExportError
        A file fails the checker or does not match PyTorch.
    """
    import torch

    from tunekit.models import create_model

    model = create_model(name, weights)

    def reference(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return _export(name, sides, batch, out_dir, "zoo", lambda key: torch_to_onnx(model, key), "input", reference,
                   on_done)


def export_onnx(source: str | Path, sides: Iterable[int], out_dir: str | Path, batch: int = 1,
                on_done: Callable[[ExportResult], None] | None = None) -> list[ExportResult]:
    """Specialise a user's ONNX model (dynamic H/W) to each side, checked against the original graph.

    Raises
    ------
    OnnxModelError
        Unreadable file, no single NCHW input, or a fixed size that differs from a requested side.
    ExportError
        A specialised file fails the checker or differs from the original.
    """
    original = onnxutil.load(source)
    info = onnxutil.image_input(original)
    return _export(model_name_for(source), sides, batch, out_dir, str(Path(source).resolve()),
                   lambda key: onnxutil.specialise(original, batch, key.height, key.width), info.name,
                   lambda x: onnxutil.run(original, {info.name: x})[0], on_done)


def _export(name: str, sides: Iterable[int], batch: int, out_dir: str | Path, source: str,
            graph_of: Callable[[Key], onnx.ModelProto], input_name: str, reference: Callable[[np.ndarray], np.ndarray],
            on_done: Callable[[ExportResult], None] | None) -> list[ExportResult]:
    """Write one checked static-shape ONNX file per side, each compared with ``reference`` on the seeded input,
    and enter each into the directory's manifest as it is written."""
    out = Path(out_dir)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for side in sides:
        key = Key(name, side, side, batch)
        graph = graph_of(key)
        path = out / key.filename("onnx")
        _save_checked(graph, path)
        x = sample_input(onnxutil.image_input(graph).shape)
        want = np.asarray(reference(x), dtype=np.float64)
        got = onnxutil.run(path, {input_name: x})[0]
        diff, tol = _compare(key, got, want)
        result = ExportResult(key, path, diff, tol, onnxutil.graph_inputs(graph), onnxutil.graph_outputs(graph))
        results.append(result)
        _write_manifest(out, name, source, results[-1:])
        if on_done:
            on_done(result)
    return results


EXPORT_KIND = "tunekit-onnx-export"


def check_out_dir(out: Path, kind: str = EXPORT_KIND, what: str = "a tunekit export manifest") -> None:
    """Refuse, before any work, an --out that is a file or holds a manifest.json of another ``kind``
    (export's and build's directories alike: neither overwrites what it did not write)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    path = out / MANIFEST
    if path.exists():
        try:
            found = json.loads(path.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != kind:
            raise ExportError(f"--out {out}: holds a {MANIFEST} that is not {what}; choose another directory")


def _write_manifest(out: Path, model: str, source: str, results: list[ExportResult]) -> None:
    """Merge ``results`` into ``out/manifest.json``, written atomically (a crash never leaves half a file)."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    entries = {e["key"]: e for e in manifest.get("exports", [])}
    entries.update({str(r.key): {**r.to_json(), "source": source} for r in results})
    manifest = {"kind": EXPORT_KIND, "opset": OPSET,
                "exports": sorted(entries.values(), key=lambda e: (e["model"], e["resolution"], e["batch"]))}
    write_json(path, manifest)
