"""Tuned TVM against the libraries a user would deploy instead, side by side per resolution.

Backends: ``tuned`` (the built artifact), ``untuned`` (TVM with default
schedules), ``onednn`` (PyTorch eager), ``onnxruntime`` and ``openvino``. Every
backend runs the same static-shape model on the same seeded input with the same
thread count, under one frozen protocol (``Protocol``).

How the race is kept fair (measured on 2 Zen 4 cores, resnet18 at 112): after
its last call, TVM's thread pool keeps a worker spinning on one core for about
160 ms (``TVM_THREAD_POOL_SPIN_COUNT``), ONNX Runtime's pool for about 40 ms,
PyTorch's OpenMP team for about 8 ms. The earlier protocol idled a fixed 30 ms
between backends in one process, so PyTorch often ran beside TVM's spinning
worker: 12-24 ms per call in the race against 11 ms alone. Making a backend
spin less (OMP_WAIT_POLICY=PASSIVE made PyTorch 24 ms) would time it unlike a
user runs it. So:

- every backend runs in a worker process of its own, so thread pools, pinned
  affinities (TVM pins its threads) and allocators never meet;
- after warm-up and after every repeat, a worker waits until its own process
  has gone quiet (all its threads together below ``quiet_pct`` of one core over
  ``quiet_window_ms``) before it answers; only then does the next backend run.
  The settle time is measured, not guessed, so it holds for any pool and CPU;
- repeats are interleaved across backends (repeat 1 of each, then repeat 2,
  with the order rotated every repeat), so drift on a noisy machine hits every
  backend alike;
- one process is one sample: the whole sweep runs in ``processes`` fresh rounds
  of workers, and the report gives the spread across processes beside the
  spread within them.

``--isolation-check`` times every backend again alone (its worker the only
one alive) and reports how far the race figure is from the solo one.
"""

from __future__ import annotations

import gc
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.errors import BenchError, WorkerError
from tunekit.keys import Key
from tunekit.targets import TargetSpec

BACKENDS = ("tuned", "onednn", "untuned", "onnxruntime", "openvino")
OPTIONAL = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # backend -> Python module


@dataclass(frozen=True)
class Protocol:
    """How every backend is timed.

    In each of ``processes`` rounds, every backend gets a fresh worker process.
    Per resolution, a worker warms up for ``warmup_ms`` (at least 3 calls), then
    runs ``repeats`` repeats; a repeat is a few untimed calls, then ``number`` back-to-back calls, ``number``
    chosen so a repeat lasts at least ``min_repeat_ms``, and its time / ``number``
    is one sample. So each backend gets ``processes x repeats`` samples per
    resolution; the report gives their median and 10th / 90th percentiles, and
    the median of each process. Before answering, a worker waits until its own
    threads use less than ``quiet_pct`` % of a core over ``quiet_window_ms``
    (at most ``max_settle_ms``).
    """

    warmup_ms: float = 300.0
    repeats: int = 10
    processes: int = 3
    min_repeat_ms: float = 50.0
    quiet_pct: float = 10.0
    quiet_window_ms: float = 10.0
    max_settle_ms: float = 3000.0

    def describe(self) -> str:
        return (f"{self.processes} fresh processes per backend, one worker process per backend; in each, warm-up "
                f"{self.warmup_ms:.0f} ms (>= 3 calls) then {self.repeats} repeats interleaved across backends "
                f"(order rotated), each 2+ untimed calls then >= {self.min_repeat_ms:.0f} ms of back-to-back calls; a backend "
                f"runs only "
                f"after the previous one's threads went quiet (< {self.quiet_pct:.0f}% of a core over "
                f"{self.quiet_window_ms:.0f} ms); median and p10/p90 of {self.processes * self.repeats} per-call "
                "samples, and the spread of the per-process medians")


def parse_backends(text: str | None) -> list[str]:
    if not text:
        return list(BACKENDS)
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    return names


def installed(backend: str) -> bool:
    """Whether an optional backend's library is importable (ONNX Runtime, OpenVINO)."""
    import importlib.util

    module = OPTIONAL.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


class _Timer:
    """One backend's calls and its samples under a protocol (runs inside the backend's worker)."""

    def __init__(self, call: Callable[[], object], protocol: Protocol):
        self.call = call
        end = time.perf_counter() + protocol.warmup_ms / 1e3
        calls = 0
        while calls < 3 or time.perf_counter() < end:
            t0 = time.perf_counter()
            call()
            once = time.perf_counter() - t0
            calls += 1
        self.number = max(1, int(np.ceil(protocol.min_repeat_ms / 1e3 / max(once, 1e-7))))

    def repeat(self) -> float:
        # Untimed calls first (2, and 10% of a repeat at least): the backend that ran before evicted this
        # one's weights from the caches, and the cores may have clocked down while idle; a backend running
        # alone never sees either.
        for _ in range(max(2, self.number // 10)):
            self.call()
        t0 = time.perf_counter()
        for _ in range(self.number):
            self.call()
        return (time.perf_counter() - t0) / self.number


def settle(protocol: Protocol) -> float:
    """Wait until this process's threads have gone quiet; returns the ms waited.

    ``time.process_time`` counts the CPU time of every thread of the process, so
    a pool still spinning after the last call shows as busy.
    """
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(protocol.quiet_window_ms / 1e3)
        busy = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
        waited = (time.perf_counter() - start) * 1e3
        if busy * 100 < protocol.quiet_pct or waited > protocol.max_settle_ms:
            return waited


def torch_versions() -> dict:
    import torch

    config = torch.__config__.show()
    found = re.search(r"oneDNN v([\d.]+)", config) or re.search(r"MKL-DNN v([\d.]+)", config)
    return {"torch": torch.__version__, "onednn": found.group(1) if found else "unknown",
            "mkldnn_enabled": bool(torch.backends.mkldnn.is_available())}


# ------------------------------------------------------- backends (in workers)
@dataclass(frozen=True)
class Job:
    """What a worker needs to run one backend at one resolution (picklable)."""

    key: Key
    onnx: str  # the static-shape ONNX file
    artifact: tuple[str, str] | None = None  # (directory, file) for tuned / untuned
    model: str | None = None  # zoo model name, for onednn
    weights: str | None = None
    seed: int = 0

    def input(self) -> np.ndarray:
        return np.random.default_rng(self.seed).standard_normal(self.key.input_shape, dtype=np.float32)


def _tvm(job: Job, threads: int, protocol: Protocol):
    import tvm

    from tunekit import runtime

    artifact = runtime.load(job.artifact[0], job.artifact[1], threads=threads)
    tensor = tvm.runtime.tensor(job.input(), artifact.device)
    main, sync = artifact._main, artifact.device.sync
    entry = artifact.entry
    return (lambda: (main(tensor), sync())), {"artifact": artifact.path.name, "tuned_tasks": entry["tuned"],
                                              "fallback_tasks": entry["fallback"]}


def _onednn(job: Job, threads: int, protocol: Protocol):
    """PyTorch eager on oneDNN, in whichever of NCHW and channels_last is faster here (reported)."""
    import copy

    import torch

    from tunekit.frontend import zoo_model

    torch.set_num_threads(threads)
    net = zoo_model(job.model, job.weights).eval()
    x = torch.from_numpy(job.input())
    variants = {"NCHW": (net, x),
                "channels_last": (copy.deepcopy(net).to(memory_format=torch.channels_last),
                                  x.contiguous(memory_format=torch.channels_last))}

    def caller(model, tensor):
        def call():
            with torch.inference_mode():
                return model(tensor)
        return call

    quick = Protocol(warmup_ms=protocol.warmup_ms / 2, min_repeat_ms=protocol.min_repeat_ms)
    times = {}
    for layout, (model, tensor) in variants.items():
        timer = _Timer(caller(model, tensor), quick)
        times[layout] = min(timer.repeat() for _ in range(5))
    layout = min(times, key=times.get)
    return caller(*variants[layout]), {"layout": layout}


def _onnxruntime(job: Job, threads: int, protocol: Protocol):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(job.onnx, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: job.input()}
    return (lambda: session.run(None, feed)), {"version": ort.__version__}


def _openvino(job: Job, threads: int, protocol: Protocol):
    """OpenVINO's CPU plugin: f32, latency hint, the same threads."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(job.onnx), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = job.input()
    return (lambda: request.infer({0: x})), {"version": ov.__version__}


FACTORIES = {"tuned": _tvm, "untuned": _tvm, "onednn": _onednn, "onnxruntime": _onnxruntime,
             "openvino": _openvino}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1][:300] if text else ''}"


def worker_main(conn, backend: str, threads: int) -> None:
    """A backend's worker process: answers ("prepare", job, protocol), ("repeat",), ("release",), ("exit",)."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):  # read when each library's pool starts
        os.environ[var] = str(threads)
    timer, protocol = None, Protocol()
    while True:
        op, *args = conn.recv()
        try:
            if op == "exit":
                return
            if op == "prepare":
                job, protocol = args
                call, extra = FACTORIES[backend](job, threads, protocol)
                timer = _Timer(call, protocol)
                conn.send(("ok", {"number": timer.number, "extra": extra, "settle_ms": settle(protocol),
                                  "pid": os.getpid()}))
            elif op == "repeat":
                sec = timer.repeat()
                conn.send(("ok", {"sec": sec, "settle_ms": settle(protocol)}))
            elif op == "release":
                timer = None
                gc.collect()
                conn.send(("ok", {}))
        except Exception as exc:  # a backend that cannot run is reported, never fatal to the race
            conn.send(("error", _one_line(exc)))


class _Worker:
    """The coordinator's handle on one backend's worker process."""

    def __init__(self, backend: str, threads: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this one
        self.backend = backend
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, backend, threads), daemon=True,
                                name=f"tunekit-bench-{backend}")
        self.proc.start()
        child.close()

    def ask(self, *message, timeout: float = 900.0) -> dict:
        try:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                raise WorkerError(f"{self.backend}: no answer from its worker in {timeout:.0f} s")
            status, payload = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(1)
            raise WorkerError(f"{self.backend}: its worker process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise WorkerError(f"{self.backend}: {payload}")
        return payload

    def close(self) -> None:
        try:
            self.conn.send(("exit",))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@dataclass
class _Samples:
    """One backend's samples at one resolution: (process index, seconds) pairs."""

    pairs: list[tuple[int, float]] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # the worker process of each round
    settle_ms: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def stats(self) -> dict:
        ms = np.array([s for _, s in self.pairs]) * 1e3
        per_process = [float(np.median([s * 1e3 for p, s in self.pairs if p == k]))
                       for k in sorted({p for p, _ in self.pairs})]
        median = float(np.median(ms))
        return {"median_ms": median, "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90)),
                "samples": len(ms), "calls_per_repeat": int(np.median(self.numbers)),
                "process_medians_ms": per_process,
                "process_spread_pct": 100 * (max(per_process) - min(per_process)) / median,
                "settle_ms": float(np.median(self.settle_ms)) if self.settle_ms else 0.0,
                "raw_ms": [round(float(v), 5) for v in ms], "raw_process": [p for p, _ in self.pairs]}


def race(jobs: dict[str, list[Job]], threads: int, protocol: Protocol,
         on_progress: Callable[[str], None] | None = None, rounds: range | None = None,
         results: list[dict[str, _Samples]] | None = None,
         errors: dict[str, str] | None = None) -> tuple[list[dict[str, _Samples]], dict[str, str]]:
    """Time ``jobs`` (backend -> one Job per key, same order) under ``protocol``, in process ``rounds``
    (default: all of them), adding to ``results`` and ``errors`` when given.

    Returns (per key: backend -> samples) and (backend -> the one-line error that stopped it).
    """
    names = list(jobs)
    count = len(next(iter(jobs.values()))) if jobs else 0
    results = results if results is not None else [{b: _Samples() for b in names} for _ in range(count)]
    errors = errors if errors is not None else {}
    for process in rounds if rounds is not None else range(protocol.processes):
        live = [b for b in names if b not in errors]
        workers = {b: _Worker(b, threads) for b in live}
        try:
            for k in range(count):
                ready = []
                for b in live:
                    if b in errors:
                        continue
                    try:
                        answer = workers[b].ask("prepare", jobs[b][k], protocol)
                    except WorkerError as exc:
                        errors[b] = str(exc)
                        continue
                    results[k][b].extra = answer["extra"]
                    results[k][b].numbers.append(answer["number"])
                    results[k][b].pids.append(answer["pid"])
                    ready.append(b)
                for r in range(protocol.repeats):
                    shift = r % max(len(ready), 1)
                    for b in ready[shift:] + ready[:shift]:
                        if b in errors:
                            continue
                        try:
                            answer = workers[b].ask("repeat")
                        except WorkerError as exc:
                            errors[b] = str(exc)
                            continue
                        results[k][b].pairs.append((process, answer["sec"]))
                        results[k][b].settle_ms.append(answer["settle_ms"])
                for b in ready:
                    if b not in errors:
                        try:
                            workers[b].ask("release")
                        except WorkerError as exc:
                            errors[b] = str(exc)
                if on_progress:
                    on_progress(f"process {process + 1}/{protocol.processes}, key {k + 1}/{count}")
        finally:
            for w in workers.values():
                w.close()
    return results, errors


@dataclass
class BenchContext:
    """What a benchmark needs besides the protocol."""

    spec: TargetSpec
    keys: list[Key]
    graph_of: Callable[[Key], object]
    model: str | None  # zoo model name (PyTorch reference for onednn), else None
    weights: str | None
    tuned_artifact: Callable[[Key], tuple[Path, str]]  # key -> (directory, file) of a built library
    untuned_artifact: Callable[[Key], tuple[Path, str]]
    threads: int
    scratch: Path  # where the ONNX files the library backends read are written


def _jobs(ctx: BenchContext, backends: list[str], notes: list[str]) -> tuple[dict[str, list[Job]], list]:
    """Build everything first (nothing compiles while anything is timed): backend -> jobs, and the costs."""
    from tunekit.cost import graph_cost

    chosen = []
    for b in backends:
        if b == "onednn" and ctx.model is None:
            notes.append("onednn: skipped, --onnx models have no PyTorch module")
        elif not installed(b):
            notes.append(f"{b}: skipped, not installed (pip install 'tunekit[{b}]')")
        else:
            chosen.append(b)
    jobs: dict[str, list[Job]] = {b: [] for b in chosen}
    costs = []
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    for key in ctx.keys:
        graph = ctx.graph_of(key)
        costs.append(graph_cost(graph, key.height))
        onnx_path = ctx.scratch / key.filename("onnx")
        onnx_path.write_bytes(graph.SerializeToString())
        for b in chosen:
            artifact = None
            if b in ("tuned", "untuned"):
                directory, file = (ctx.tuned_artifact if b == "tuned" else ctx.untuned_artifact)(key)
                artifact = (str(directory), file)
            jobs[b].append(Job(key, str(onnx_path), artifact, ctx.model, ctx.weights))
    return jobs, costs


def run(ctx: BenchContext, backends: list[str], protocol: Protocol = Protocol(), isolation_check: bool = False,
        peak: dict | None = None, on_progress: Callable[[str], None] | None = None) -> dict:
    """Measure every backend at every key; returns ``{"rows": [...], "notes": [...], "errors": {...}}``.

    Rows hold, per backend, the stats of ``_Samples.stats`` plus images/s,
    GFLOP/s and % of ``peak["gflops"]``; with ``isolation_check`` also the
    backend's solo figure (``row[b]["solo"]``) and whether the two agree within
    the larger of 5% and the solo p10-p90 spread.
    """
    notes: list[str] = []
    jobs, costs = _jobs(ctx, backends, notes)
    count = len(ctx.keys)
    results: list[dict[str, _Samples]] = [{b: _Samples() for b in jobs} for _ in range(count)]
    errors: dict[str, str] = {}
    solo_results = {b: [{b: _Samples()} for _ in range(count)] for b in jobs}
    for process in range(protocol.processes):
        race({b: j for b, j in jobs.items() if b not in errors}, ctx.threads, protocol, on_progress,
             range(process, process + 1), results, errors)
        # The solo rounds follow each race round, so slow drift of a shared machine hits both alike.
        for b in jobs if isolation_check else ():
            if b not in errors:
                race({b: jobs[b]}, ctx.threads, protocol,
                     on_progress and (lambda text, b=b: on_progress(f"{b} alone: {text}")),
                     range(process, process + 1), solo_results[b], errors)
    solo = {b: [per_key[b] for per_key in solo_results[b]] for b in jobs if isolation_check and b not in errors}
    rows = []
    for k, key in enumerate(ctx.keys):
        cost = costs[k]
        row = {"resolution": key.height, "height": key.height, "width": key.width, "batch": key.batch,
               "gmacs": cost.gmacs, "gflops": cost.gflops}
        for b, samples in results[k].items():
            if not samples.pairs:
                continue
            stats = samples.stats()
            secs = stats["median_ms"] / 1e3
            stats["images_per_s"] = key.batch / secs
            stats["gflops_per_s"] = cost.gflops / secs
            stats["pct_peak"] = 100 * stats["gflops_per_s"] / peak["gflops"] if peak else None
            if b in solo and solo[b][k].pairs:
                alone = solo[b][k].stats()
                deviation = stats["median_ms"] / alone["median_ms"] - 1
                spread = (alone["p90_ms"] - alone["p10_ms"]) / alone["median_ms"]
                stats["solo"] = {"median_ms": alone["median_ms"], "p10_ms": alone["p10_ms"],
                                 "p90_ms": alone["p90_ms"], "process_medians_ms": alone["process_medians_ms"],
                                 "deviation": deviation, "tolerance": max(0.05, spread),
                                 "agrees": abs(deviation) <= max(0.05, spread)}
            row[b] = stats | samples.extra
        if "tuned" in row and "onednn" in row:
            row["speedup_vs_onednn"] = row["onednn"]["median_ms"] / row["tuned"]["median_ms"]
        if "tuned" in row and any(b in row for b in ("onnxruntime", "openvino")):
            best = min((b for b in ("onnxruntime", "openvino") if b in row), key=lambda b: row[b]["median_ms"])
            row["speedup_vs_fastest_library"] = {"backend": best,
                                                 "ratio": row[best]["median_ms"] / row["tuned"]["median_ms"]}
        rows.append(row)
    for b, message in errors.items():
        notes.append(f"{b}: failed: {message}")
    return {"rows": rows, "notes": notes, "errors": errors}


def scaling_efficiency(rows: list[dict]) -> dict:
    """Per backend: its FLOP rate at the largest resolution over its rate at the smallest, that is the FLOP
    ratio over the time ratio (the ideal time at the large end, the small end's time grown with the FLOPs,
    over the time measured). 1.0: the time grows as the FLOPs; below 1, the large end loses efficiency (say,
    activations outgrowing the cache); above 1, it gains (more work to share, Winograd on more layers)."""
    if len(rows) < 2:
        return {}
    small, large = min(rows, key=lambda r: r["gflops"]), max(rows, key=lambda r: r["gflops"])
    flop_ratio = large["gflops"] / small["gflops"]
    out = {}
    for name in BACKENDS:
        if name in small and name in large:
            out[name] = flop_ratio / (large[name]["median_ms"] / small[name]["median_ms"])
    return out


def fits_budget(report: dict, budget_ms: float) -> dict[str, tuple[int, float] | None]:
    """Per backend in the report: (the highest resolution whose median latency fits ``budget_ms``, that
    median), or None where none fits."""
    out: dict[str, tuple[int, float] | None] = {}
    for name in BACKENDS:
        rows = [r for r in report["rows"] if name in r]
        if rows:
            fitting = [(r["resolution"], r[name]["median_ms"]) for r in rows if r[name]["median_ms"] <= budget_ms]
            out[name] = max(fitting) if fitting else None
    return out


def environment(spec: TargetSpec, threads: int) -> dict:
    import tvm

    from tunekit.targets import cpu_info

    info = cpu_info()
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
           if f in info["flags"]]
    versions = torch_versions() | {"tvm": tvm.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime", "openvino"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    import psutil

    from tvm.target import codegen

    import tunekit

    versions["tunekit"] = tunekit.__version__
    return {"machine": {"cpu": info["model"], "mcpu": str(codegen.llvm_get_system_cpu()),
                        "cores": psutil.cpu_count(logical=False),
                        "threads": psutil.cpu_count(logical=True), "isa": isa},
            "versions": versions, "git_commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "threads": threads, "target": spec.to_json()}


def git_commit() -> str | None:
    """The commit of the tunekit source tree this runs from (with ``+dirty`` for uncommitted changes), or None
    for an installed wheel."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0 or Path(head.stdout.split()[0], "tunekit").resolve() != here:
            return None  # not a checkout, or a checkout of something else (a venv inside a repository)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.split()[1] + ("+dirty" if dirty else "")


# ---------------------------------------------------------------- formatting
def present(report: dict) -> list[str]:
    """The backends a report has figures for, in table order."""
    return [b for b in BACKENDS if any(b in r for r in report["rows"])]


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Table II (latency per backend and the oneDNN/tuned speedup) and Fig. 7 (images/s, GFLOP/s, % of peak)."""
    backends = present(report)
    both = "tuned" in backends and "onednn" in backends
    library = "tuned" in backends and any("speedup_vs_fastest_library" in r for r in report["rows"])
    peak = (report.get("peak") or {}).get("gflops")
    latency = ["res", "GFLOPs"] + [f"{b} ms" for b in backends] + (["speedup vs oneDNN"] if both else [])
    latency += ["speedup vs fastest library"] if library else []
    throughput = ["res"] + [f"{b} GFLOP/s" + (" (% peak)" if peak else "") for b in backends]
    lat_rows, thr_rows = [], []
    for r in report["rows"]:
        res = f"{r['height']}x{r['width']}"
        cells = [res, f"{r['gflops']:.2f}"]
        for b in backends:
            s = r.get(b)
            cells.append(f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}-{s['p90_ms']:.2f})" if s else "-")
        if both:
            cells.append(f"{r['speedup_vs_onednn']:.2f}x" if "speedup_vs_onednn" in r else "-")
        if library:
            fastest = r.get("speedup_vs_fastest_library")
            cells.append(f"{fastest['ratio']:.2f}x ({fastest['backend']})" if fastest else "-")
        lat_rows.append(cells)
        thr_rows.append([res] + [(f"{r[b]['gflops_per_s']:.1f}" + (f" ({r[b]['pct_peak']:.0f}%)" if peak else ""))
                                 if b in r else "-" for b in backends])
    peak_text = f", peak {peak:.0f} GFLOP/s ({report['peak']['how']})" if peak else ""
    out = [("latency, ms: median (p10-p90)", latency, lat_rows),
           (f"throughput, batch {report['batch']}{peak_text}", throughput, thr_rows)]
    spread = [[f"{r['height']}x{r['width']}"] + [
        (f"{r[b]['process_spread_pct']:.1f}% ({', '.join(f'{m:.2f}' for m in r[b]['process_medians_ms'])})"
         if b in r and "process_medians_ms" in r[b] else "-") for b in backends] for r in report["rows"]]
    out.append(("spread across processes: (max-min)/median of the per-process medians (the medians, ms)",
                ["res"] + backends, spread))
    if any("solo" in r.get(b, {}) for r in report["rows"] for b in backends):
        check = []
        for r in report["rows"]:
            cells = [f"{r['height']}x{r['width']}"]
            for b in backends:
                solo = r.get(b, {}).get("solo")
                cells.append(f"{r[b]['median_ms']:.2f} / {solo['median_ms']:.2f} ({solo['deviation']:+.1%}, "
                             f"{'ok' if solo['agrees'] else 'DIFFERS'} within {solo['tolerance']:.0%})"
                             if solo else "-")
            check.append(cells)
        out.append(("isolation check: race / solo median ms (deviation, verdict within max(5%, solo p10-p90))",
                    ["res"] + backends, check))
    return out


def to_markdown(report: dict) -> str:
    lines = [f"# {report['model']} on {report['target']['name']}: tuned TVM vs the libraries", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpu']} (LLVM mcpu "
             f"{report['machine'].get('mcpu', '?')}), {report['machine']['cores']} cores, ISA "
             f"{' '.join(report['machine']['isa'])}; threads: {report['threads']}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v is not None) + "  ",
             f"Protocol: {report['protocol']['text']}"]
    for title, header, rows in tables(report):
        lines += ["", f"## {title[0].upper()}{title[1:]}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    layouts = {r["resolution"]: r["onednn"]["layout"] for r in report["rows"] if "onednn" in r}
    if layouts:
        lines += ["", "PyTorch layout used (the faster of NCHW and channels_last): "
                  + ", ".join(f"{k}: {v}" for k, v in layouts.items())]
    eff = report.get("scaling_efficiency") or {}
    if eff:
        lines += ["", "Scaling efficiency (FLOP rate at the largest resolution over the rate at the smallest: "
                  "FLOP ratio / time ratio; 1.00 = time grows as the FLOPs, below 1 the large end loses): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in eff.items())]
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def to_csv(report: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["resolution", "gflops", "backend", "median_ms", "p10_ms", "p90_ms", "images_per_s",
                     "gflops_per_s", "pct_peak"])
    for r in report["rows"]:
        for b in BACKENDS:
            if b in r:
                s = r[b]
                writer.writerow([r["resolution"], f"{r['gflops']:.4f}", b, f"{s['median_ms']:.4f}",
                                 f"{s['p10_ms']:.4f}", f"{s['p90_ms']:.4f}", f"{s['images_per_s']:.2f}",
                                 f"{s['gflops_per_s']:.2f}", "" if s["pct_peak"] is None else f"{s['pct_peak']:.2f}"])
    return buf.getvalue()


def render(report: dict, fmt: str) -> str:
    """The report as ``json``, ``md`` or ``csv`` text, ending in a newline."""
    import json

    text = {"json": lambda: json.dumps(report, indent=2), "md": lambda: to_markdown(report),
            "csv": lambda: to_csv(report)}[fmt]()
    return text if text.endswith("\n") else text + "\n"
