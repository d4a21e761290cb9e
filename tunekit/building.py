"""Build deployable libraries from the tuning database, one per resolution, verified.

The flow for each resolution:

1. ``frontend.prepare``, exactly as tuning did, so database keys match.
2. Bind the weights and fold: the weight-only work (bias reshapes, weight
   transposes) runs once, here, on the build host.
3. Apply the database's best schedule to every task; count tuned and fallback.
   A task with no record of its own takes, on CPUs, the best schedule of the
   same task at the nearest tuned resolution, adapted (``transfer``): zero-search
   transfer, counted as 'transferred'.
4. ``fallback.apply`` gives the remaining functions default schedules.
5. On CPUs, split the tuned schedules' weight-layout rewrites out and fold them
   too, so the packed weights are constants of the library and the entry point
   takes only the image. Tuned kernels that stream large weights prefetch them
   (``tunekit.prefetch``; the target's ``prefetch`` turns it off).
6. Compile, ``export_library`` to a temporary file, load it through the same
   runtime path users take, run it on a seeded random input and compare with
   the PyTorch model (zoo) or the ONNX graph (``--onnx``). Only a library that
   matches is moved into place and entered in ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.common import MANIFEST, interrupts_kept, sample_input, sha256, write_json
from tunekit.errors import BuildError
from tunekit.keys import Key
from tunekit.runtime import MANIFEST_KIND, Artifact, has_cuda
from tunekit.targets import TargetSpec

# Outputs must agree within ATOL + RTOL * max|reference|. Looser than export's
# 1e-4: tuned schedules reorder float32 reductions (measured max error on
# ResNet-18: ~1e-6 relative).
ATOL = 1e-3
RTOL = 1e-3
LATENCY_RUNS, LATENCY_SECONDS = 20, 0.5  # the manifest's latency: at least 20 calls and 0.5 s of them


@dataclass
class Built:
    """One library and what went into it."""

    key: Key
    path: Path
    tuned: list[str]
    transferred: dict[str, int]  # task -> resolution its schedule was adapted from
    fallback: list[str]
    verification: str
    max_abs_err: float | None
    tolerance: float | None
    compile_s: float
    load_ms: float | None
    first_run_ms: float | None
    latency: dict | None = None  # measured after verification: median_ms, p90_ms, runs, threads

    def to_entry(self, spec: TargetSpec, inputs, outputs, file: Path | None = None) -> dict:
        """The manifest entry, for ``file`` (default: the library's final path)."""
        import tvm

        file = file or self.path
        return {"file": file.name, "model": self.key.model, "resolution": [self.key.height, self.key.width],
                "batch": self.key.batch, "target_name": spec.name, "target": spec.tvm,
                "threads": spec.threads or None, "layout": spec.conv_layout,
                "winograd": spec.conv_winograd, "weight_prefetch": spec.weight_prefetch,
                "tvm_version": tvm.__version__, "input": inputs, "output": outputs,
                "tasks": len(self.tuned) + len(self.transferred) + len(self.fallback), "tuned": len(self.tuned),
                "transferred": len(self.transferred), "transferred_from": self.transferred,
                "fallback": len(self.fallback), "fallback_tasks": self.fallback,
                "verification": self.verification, "max_abs_err": self.max_abs_err, "tolerance": self.tolerance,
                "load_ms": self.load_ms, "first_run_ms": self.first_run_ms, "latency": self.latency,
                "sha256": sha256(file), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def artifact_name(key: Key, spec: TargetSpec) -> str:
    return f"{key}.{spec.name}.so"


def _primfuncs(mod) -> dict:
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _fold(mod, target):
    """Evaluate every call whose arguments are all constants (on the build host) and drop dead functions."""
    from tvm import relax

    with target:
        mod = relax.transform.FoldConstant()(mod)
        return relax.transform.DeadCodeElimination(["main"])(mod)


def _transfer(mod, names: list[str], key: Key, target, db) -> dict[str, int]:
    """Zero-search transfer: give tasks without records the adapted best schedule of the same task at the
    nearest tuned resolution. Returns {task name: donor resolution} for those that took one."""
    from tunekit import fallback
    from tunekit import transfer as xfer

    taken = {}
    for name in names:
        adapted, _ = xfer.candidates(db, fallback.task_module(mod[name]), target, key.model, key.batch, name,
                                     key.height, None, limit=1)
        if adapted:
            donor, sch = adapted[0]
            mod[name] = fallback.as_scheduled(sch, name)
            taken[name] = donor.resolution
    return taken


def compile_module(graph, spec: TargetSpec, db, key: Key | None = None,
                   transfer: bool = True) -> tuple[object, list[str], dict[str, int], list[str]]:
    """Compile one static-shape graph: (executable, tuned task names, {transferred task: donor resolution},
    fallback task names). Transfer (CPU targets, with a database and ``key``) applies to tasks with no record."""
    import tvm
    from tvm import relax

    from tunekit import fallback, frontend, prefetch

    with interrupts_kept() as stop_if_interrupted:  # a Ctrl-C that TVM swallows still stops the build
        target = spec.tvm_target()
        mod, params = frontend.to_relax(graph)
        prepared = frontend.prepare(mod, target, spec.conv_layout, spec.conv_winograd)
        stop_if_interrupted()
        weights = list(prepared["main"].params)[1:]
        mod = relax.transform.BindParams("main", dict(zip(weights, params)))(prepared)
        mod = _fold(mod, target)
        tasks = set(_primfuncs(mod))
        workloads = mod
        if db is not None:
            with target, db:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        tuned = sorted(n for n, f in _primfuncs(mod).items() if n in tasks and f.attrs.get(fallback.IS_SCHEDULED))
        if spec.weight_prefetch and db is not None:
            prefetch.apply_to_tuned(workloads, mod, tuned, target, db)
        transferred = {}
        if transfer and db is not None and key is not None and spec.kind == "llvm":
            transferred = _transfer(mod, sorted(tasks - set(tuned)), key, target, db)
        mod = fallback.apply(mod, target)
        stop_if_interrupted()
        if spec.kind == "llvm":
            with target:
                mod = relax.transform.SplitLayoutRewritePreproc()(mod)
            mod = _fold(mod, target)
        try:
            executable = tvm.compile(mod, target=target,
                                     tir_pipeline=prefetch.register_pipeline() if spec.weight_prefetch else "default")
        except Exception as exc:  # TVM's codegen raises TVMError / RuntimeError subclasses
            raise BuildError(f"TVM cannot compile for {spec.name}: {str(exc).strip().splitlines()[-1]}") from None
        return executable, tuned, transferred, sorted(tasks - set(tuned) - set(transferred))


def _write_manifest(out: Path, entries: list[dict]) -> None:
    """Merge ``entries`` into ``out/manifest.json`` by file name, atomically."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    merged = {e["file"]: e for e in manifest.get("artifacts", [])}
    merged.update({e["file"]: e for e in entries})
    manifest = {"kind": MANIFEST_KIND,
                "artifacts": sorted(merged.values(), key=lambda e: (e["model"], e["resolution"], e["file"]))}
    write_json(path, manifest)


def _verify(key: Key, library: Path, entry: dict, reference: Callable[[np.ndarray], np.ndarray]):
    """Load ``library`` as users will, compare it with ``reference`` and time it:
    (max_err, tol, load_ms, first_run_ms, latency)."""
    t0 = time.perf_counter()
    artifact = Artifact(library, entry)
    load_ms = (time.perf_counter() - t0) * 1e3
    x = sample_input(entry["input"]["shape"])
    t0 = time.perf_counter()
    got = artifact.run(x)
    first_run_ms = (time.perf_counter() - t0) * 1e3
    want = np.asarray(reference(x), dtype=np.float64)
    if got.shape != want.shape:
        raise BuildError(f"{key}: output shape {list(got.shape)} differs from the reference's {list(want.shape)}")
    err = float(np.max(np.abs(got - want)))
    tol = ATOL + RTOL * float(np.max(np.abs(want)))
    if not err <= tol:  # also catches NaN
        raise BuildError(f"{key}: built library differs from the reference by {err:.3g} (tolerance {tol:.3g});"
                         " not written")
    return err, tol, load_ms, first_run_ms, measure_latency(artifact, x)


def measure_latency(artifact: Artifact, x: np.ndarray, min_runs: int = LATENCY_RUNS,
                    min_seconds: float = LATENCY_SECONDS) -> dict:
    """The artifact's latency on its threads, in this process: 3 warm-up calls, then at least ``min_runs``
    calls and ``min_seconds`` of them, one timing each. A short protocol for routing (``Bundle``'s budget
    policy), not a benchmark: ``tunekit bench`` is the fair race."""
    for _ in range(3):
        artifact.run(x)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        artifact.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "runs": len(times),
            "threads": artifact.threads}


def build(spec: TargetSpec, keys: list[Key], graph_of: Callable[[Key], object],
          reference_of: Callable[[Key], Callable[[np.ndarray], np.ndarray]], db, out_dir: str | Path,
          on_done: Callable[[Built], None] | None = None, transfer: bool = True) -> list[Built]:
    """Build, verify and enter into ``out_dir/manifest.json`` one library per key.

    ``db`` is an open tuning database bound to ``spec``'s target (or None: all
    fallback). GPU libraries are verified only when a GPU is present.
    """
    from tunekit import onnxutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runnable = not spec.is_gpu or has_cuda()
    results = []
    for key in keys:
        graph = graph_of(key)
        t0 = time.perf_counter()
        executable, tuned, transferred, fallbacks = compile_module(graph, spec, db, key, transfer)
        compile_s = time.perf_counter() - t0
        path = out / artifact_name(key, spec)
        tmp = path.with_name(path.name + ".tmp.so")
        try:
            built = write_verified(key, spec, graph, executable, tmp, tuned, transferred, fallbacks, compile_s,
                                    runnable, reference_of, path)
        except BaseException:  # a failed check, an error, Ctrl-C: no half-written library is left behind
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        inputs = [i.to_json() for i in onnxutil.graph_inputs(graph)]
        outputs = [o.to_json() for o in onnxutil.graph_outputs(graph)]
        _write_manifest(out, [built.to_entry(spec, inputs[0], outputs[0])])
        results.append(built)
        if on_done:
            on_done(built)
    return results


def write_verified(key, spec, graph, executable, tmp, tuned, transferred, fallbacks, compile_s, runnable,
                    reference_of, path) -> "Built":
    """Export ``executable`` to ``tmp`` and verify it there; returns what went in (``path`` is its final name)."""
    from tunekit import onnxutil

    executable.export_library(str(tmp))
    inputs = [i.to_json() for i in onnxutil.graph_inputs(graph)]
    outputs = [o.to_json() for o in onnxutil.graph_outputs(graph)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BuildError(f"{key}: tunekit builds models with one input and one output"
                         f" (this one has {len(inputs)} and {len(outputs)})")
    built = Built(key, path, tuned, transferred, fallbacks, "not verified: no GPU", None, None, compile_s, None, None)
    if runnable:
        entry = built.to_entry(spec, inputs[0], outputs[0], tmp)
        err, tol, load_ms, first_ms, latency = _verify(key, tmp, entry, reference_of(key))
        built.verification = "verified"
        built.max_abs_err, built.tolerance, built.load_ms, built.first_run_ms = err, tol, load_ms, first_ms
        built.latency = latency
    return built


def reference_for(model: str | None, onnx_file: str | None, weights: str | None):
    """``key -> (image -> output)``: the PyTorch model for zoo models, the ONNX graph otherwise."""
    def zoo(key: Key):
        import torch

        from tunekit.frontend import zoo_model

        net = zoo_model(model, weights)

        def run(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()
        return run

    def graph(key: Key):
        from tunekit import onnxutil

        original = onnxutil.load(onnx_file)  # the user's graph as given, not the specialised and folded one
        name = onnxutil.image_input(original).name
        return lambda x: onnxutil.run(original, {name: x})[0]

    return zoo if model else graph
