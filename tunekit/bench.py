"""Tuned TVM against PyTorch on oneDNN (and untuned TVM, ONNX Runtime), side by side per resolution.

Every backend runs the same static-shape model on the same seeded input with
the same thread count, under one frozen protocol (``Protocol``). Repeats are
interleaved across backends (repeat 1 of every backend, then repeat 2, ...), so
a slow minute on a noisy machine hits every backend alike.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.errors import TunekitError
from tunekit.keys import Key
from tunekit.targets import TargetSpec

BACKENDS = ("tuned", "onednn", "untuned", "onnxruntime")


class BenchError(TunekitError):
    """A benchmark that cannot run as asked (unknown backend, missing artifacts, GPU target without GPU)."""


@dataclass(frozen=True)
class Protocol:
    """How every backend is timed.

    Warm up for ``warmup_ms`` (at least 3 calls), then ``repeats`` repeats; each
    repeat is ``number`` back-to-back calls, ``number`` chosen once so a repeat
    lasts at least ``min_repeat_ms``. A repeat's time / ``number`` is one sample;
    the report gives the median and the 10th / 90th percentiles of the samples.
    """

    warmup_ms: float = 300.0
    repeats: int = 15
    min_repeat_ms: float = 50.0
    gap_ms: float = 30.0

    def describe(self) -> str:
        return (f"warm-up {self.warmup_ms:.0f} ms (>= 3 calls); {self.repeats} repeats interleaved across backends, "
                f"each >= {self.min_repeat_ms:.0f} ms of back-to-back calls, {self.gap_ms:.0f} ms idle between "
                "backends; median and p10/p90 of per-call times")


def parse_backends(text: str | None) -> list[str]:
    if not text:
        return list(BACKENDS)
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    return names


class _Timer:
    """One backend's calls and its samples under a protocol."""

    def __init__(self, call: Callable[[], object], protocol: Protocol):
        self.call = call
        self.samples: list[float] = []
        end = time.perf_counter() + protocol.warmup_ms / 1e3
        calls = 0
        while calls < 3 or time.perf_counter() < end:
            t0 = time.perf_counter()
            call()
            once = time.perf_counter() - t0
            calls += 1
        self.number = max(1, int(np.ceil(protocol.min_repeat_ms / 1e3 / max(once, 1e-7))))

    def repeat(self, gap_ms: float = 0.0) -> None:
        # Idle first: thread pools (ONNX Runtime's, OpenMP's, TVM's) spin for a while after a run
        # and would steal the cores from whichever backend runs next.
        time.sleep(gap_ms / 1e3)
        t0 = time.perf_counter()
        for _ in range(self.number):
            self.call()
        self.samples.append((time.perf_counter() - t0) / self.number)

    def stats(self) -> dict:
        ms = np.array(self.samples) * 1e3
        return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                "p90_ms": float(np.percentile(ms, 90)), "samples": len(ms), "calls_per_repeat": self.number}


def torch_versions() -> dict:
    import torch

    config = torch.__config__.show()
    found = re.search(r"oneDNN v([\d.]+)", config) or re.search(r"MKL-DNN v([\d.]+)", config)
    return {"torch": torch.__version__, "onednn": found.group(1) if found else "unknown",
            "mkldnn_enabled": bool(torch.backends.mkldnn.is_available())}


def _pytorch(net, x: np.ndarray) -> tuple[Callable[[], object], Callable[[], object]]:
    """PyTorch eager on oneDNN: (NCHW call, channels_last call)."""
    import copy

    import torch

    inputs = {"NCHW": (net, torch.from_numpy(x))}
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    inputs["channels_last"] = (last, torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    def caller(layout):
        model, tensor = inputs[layout]

        def call():
            with torch.inference_mode():
                return model(tensor)
        return call

    return caller("NCHW"), caller("channels_last")


def _pick_layout(calls: dict[str, Callable], protocol: Protocol) -> str:
    """The faster PyTorch layout, by the median of a short interleaved trial."""
    quick = Protocol(warmup_ms=protocol.warmup_ms, repeats=5, min_repeat_ms=protocol.min_repeat_ms)
    timers = {name: _Timer(call, quick) for name, call in calls.items()}
    for _ in range(quick.repeats):
        for timer in timers.values():
            timer.repeat(protocol.gap_ms)
    return min(timers, key=lambda name: timers[name].stats()["median_ms"])


def has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _onnxruntime_samples(graph_bytes: bytes, x: np.ndarray, threads: int, protocol: Protocol) -> _Timer:
    """ONNX Runtime timed in a process of its own (run through ``measure_isolated``)."""
    timer = _Timer(_onnxruntime(graph_bytes, x, threads), protocol)
    for _ in range(protocol.repeats):
        timer.repeat(protocol.gap_ms)
    timer.call = None  # the session does not cross the process boundary
    return timer


def measure_isolated(graph, x: np.ndarray, threads: int, protocol: Protocol) -> _Timer:
    """Time ONNX Runtime in a fresh process: in-process, the other backends' thread pools (TVM pins
    its workers to the cores) slowed it 2x here (6.3 ms alone, 14.3 ms beside TVM, resnet18 at 112)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_onnxruntime_samples, graph.SerializeToString(), x, threads, protocol).result()


def _onnxruntime(graph_bytes: bytes, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _tvm_call(artifact, x: np.ndarray) -> Callable[[], object]:
    import tvm

    tensor = tvm.runtime.tensor(x, artifact.device)
    main = artifact._main
    sync = artifact.device.sync
    return lambda: (main(tensor), sync())


@dataclass
class BenchContext:
    """What a benchmark needs besides the protocol."""

    spec: TargetSpec
    keys: list[Key]
    graph_of: Callable[[Key], object]
    model_of: Callable[[], object] | None  # the PyTorch module (zoo models), else None
    tuned_artifact: Callable[[Key], object]  # key -> runtime.Artifact
    untuned_artifact: Callable[[Key], object]
    threads: int


def run(ctx: BenchContext, backends: list[str], protocol: Protocol = Protocol(),
        on_row: Callable[[dict], None] | None = None) -> dict:
    """Measure every backend at every key; returns the report (see ``report_json``)."""
    import torch

    from tunekit.cost import graph_cost

    torch.set_num_threads(ctx.threads)
    notes = []
    rows = []
    for key in ctx.keys:
        graph = ctx.graph_of(key)
        cost = graph_cost(graph, key.height)
        x = np.random.default_rng(0).standard_normal(key.input_shape, dtype=np.float32)
        calls: dict[str, Callable] = {}
        extra: dict[str, dict] = {}
        if "tuned" in backends:
            artifact = ctx.tuned_artifact(key)
            calls["tuned"] = _tvm_call(artifact, x)
            extra["tuned"] = {"artifact": str(artifact.path), "tuned_tasks": artifact.entry["tuned"],
                              "fallback_tasks": artifact.entry["fallback"]}
        if "onednn" in backends:
            if ctx.model_of is None:
                if not any("onednn" in n for n in notes):
                    notes.append("onednn: skipped, --onnx models have no PyTorch module")
            else:
                nchw, channels_last = _pytorch(ctx.model_of(), x)
                layout = _pick_layout({"NCHW": nchw, "channels_last": channels_last}, protocol)
                calls["onednn"] = nchw if layout == "NCHW" else channels_last
                extra["onednn"] = {"layout": layout}
        if "untuned" in backends:
            artifact = ctx.untuned_artifact(key)
            calls["untuned"] = _tvm_call(artifact, x)
            extra["untuned"] = {"artifact": str(artifact.path)}
        timers = {name: _Timer(call, protocol) for name, call in calls.items()}
        for _ in range(protocol.repeats):
            for timer in timers.values():
                timer.repeat(protocol.gap_ms)
        if "onnxruntime" in backends:
            if has_onnxruntime():
                timers["onnxruntime"] = measure_isolated(graph, x, ctx.threads, protocol)
                if not any("onnxruntime" in n for n in notes):
                    notes.append("onnxruntime: timed in a process of its own, after the others (beside TVM's "
                                 "thread pool it ran 2x slower)")
            elif not any("onnxruntime" in n for n in notes):
                notes.append("onnxruntime: skipped, not installed (pip install 'tunekit[ort]')")
        row = {"resolution": key.height, "height": key.height, "width": key.width, "batch": key.batch,
               "gmacs": cost.gmacs, "gflops": cost.gflops}
        for name, timer in timers.items():
            stats = timer.stats()
            secs = stats["median_ms"] / 1e3
            stats["images_per_s"] = key.batch / secs
            stats["gflops_per_s"] = cost.gflops / secs
            stats["pct_peak"] = (100 * stats["gflops_per_s"] / ctx.spec.peak_gflops
                                 if ctx.spec.peak_gflops else None)
            row[name] = stats | extra.get(name, {})
        if "tuned" in row and "onednn" in row:
            row["speedup_vs_onednn"] = row["onednn"]["median_ms"] / row["tuned"]["median_ms"]
        rows.append(row)
        if on_row:
            on_row(row)
    return {"rows": rows, "notes": notes}


def scaling_efficiency(rows: list[dict]) -> dict:
    """Per backend: (time at the largest / time at the smallest resolution) / (FLOP ratio). 1.0 = ideal."""
    if len(rows) < 2:
        return {}
    small, large = min(rows, key=lambda r: r["gflops"]), max(rows, key=lambda r: r["gflops"])
    flop_ratio = large["gflops"] / small["gflops"]
    out = {}
    for name in BACKENDS:
        if name in small and name in large:
            out[name] = (large[name]["median_ms"] / small[name]["median_ms"]) / flop_ratio
    return out


def environment(spec: TargetSpec, threads: int) -> dict:
    import tvm

    from tunekit.targets import cpu_info

    info = cpu_info()
    isa = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
           if f in info["flags"]]
    versions = torch_versions() | {"tvm": tvm.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        versions["onnxruntime"] = None
    import psutil

    return {"machine": {"cpu": info["model"], "cores": psutil.cpu_count(logical=False),
                        "threads": psutil.cpu_count(logical=True), "isa": isa},
            "versions": versions, "threads": threads, "target": spec.to_json()}


def default_threads(spec: TargetSpec) -> int:
    """The target's thread setting (one per physical core on SMT CPUs), capped by this machine's cores."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, min(spec.threads or cores, cores))


# ---------------------------------------------------------------- formatting
def _present(report: dict) -> list[str]:
    return [b for b in BACKENDS if any(b in r for r in report["rows"])]


def tables(report: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """Table II (latency per backend and the oneDNN/tuned speedup) and Fig. 7 (images/s, GFLOP/s, % of peak)."""
    backends = _present(report)
    both = "tuned" in backends and "onednn" in backends
    peak = report["target"].get("peak_gflops")
    latency = ["res", "GFLOPs"] + [f"{b} ms" for b in backends] + (["speedup vs oneDNN"] if both else [])
    throughput = ["res"] + [f"{b} img/s" for b in backends] + [f"{b} GFLOP/s" for b in backends]
    throughput += [f"{b} % peak" for b in backends] if peak else []
    lat_rows, thr_rows = [], []
    for r in report["rows"]:
        res = f"{r['height']}x{r['width']}"
        cells = [res, f"{r['gflops']:.2f}"]
        for b in backends:
            s = r.get(b)
            cells.append(f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}-{s['p90_ms']:.2f})" if s else "-")
        if both:
            cells.append(f"{r['speedup_vs_onednn']:.2f}x" if "speedup_vs_onednn" in r else "-")
        lat_rows.append(cells)
        cells = [res] + [f"{r[b]['images_per_s']:.1f}" if b in r else "-" for b in backends]
        cells += [f"{r[b]['gflops_per_s']:.1f}" if b in r else "-" for b in backends]
        if peak:
            cells += [f"{r[b]['pct_peak']:.1f}" if b in r else "-" for b in backends]
        thr_rows.append(cells)
    peak_text = f", peak {peak:.0f} GFLOP/s (estimated)" if peak else ""
    return [("latency, ms: median (p10-p90)", latency, lat_rows),
            (f"throughput, batch {report['batch']}{peak_text}", throughput, thr_rows)]


def to_markdown(report: dict) -> str:
    lines = [f"# {report['model']} on {report['target']['name']}: tuned TVM vs PyTorch (oneDNN)", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']['cpu']}, "
             f"{report['machine']['cores']} cores, ISA {' '.join(report['machine']['isa'])}; threads: "
             f"{report['threads']}  ",
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
        lines += ["", "Scaling efficiency (time ratio largest/smallest resolution divided by FLOP ratio; 1.00 is "
                  "ideal): " + ", ".join(f"{k} {v:.2f}" for k, v in eff.items())]
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


def plot(report: dict, path: str | Path) -> None:
    """Latency and GFLOP/s against resolution, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    res = [r["resolution"] for r in report["rows"]]
    for b in _present(report):
        pts = [(r["resolution"], r[b]) for r in report["rows"] if b in r]
        xs = [p[0] for p in pts]
        left.errorbar(xs, [s["median_ms"] for _, s in pts],
                      yerr=[[s["median_ms"] - s["p10_ms"] for _, s in pts], [s["p90_ms"] - s["median_ms"] for _, s in pts]],
                      marker="o", capsize=3, label=b)
        right.plot(xs, [s["gflops_per_s"] for _, s in pts], marker="o", label=b)
    peak = report["target"].get("peak_gflops")
    if peak:
        right.axhline(peak, color="grey", linestyle="--", linewidth=1, label=f"peak {peak:.0f}")
    left.set(xlabel="input resolution (px, square)", ylabel="latency, ms (median, p10-p90)", xticks=res,
             title="latency (lower is better)")
    right.set(xlabel="input resolution (px, square)", ylabel="achieved GFLOP/s", xticks=res,
              title="throughput (higher is better)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['model']} on {report['machine']['cpu']} ({report['threads']} threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ compare
def compare(base: dict, new: dict, max_regression: float, backends: list[str] | None = None) -> tuple[list, bool]:
    """Rows (resolution, backend, base ms, new ms, change, verdict) and whether any regressed.

    A slowdown counts as a regression only when it exceeds ``max_regression``
    *and* the runs' spreads do not overlap (new p10 above base p90): a change
    within the measured noise is reported as noise, never as a failure.
    """
    base_rows = {r["resolution"]: r for r in base["rows"]}
    out, regressed = [], False
    for r in new["rows"]:
        b = base_rows.get(r["resolution"])
        if b is None:
            continue
        for name in backends or BACKENDS:
            if name not in r or name not in b:
                continue
            old, cur = b[name], r[name]
            change = cur["median_ms"] / old["median_ms"] - 1
            if change > max_regression and cur["p10_ms"] > old["p90_ms"]:
                verdict, regressed = "REGRESSION", True
            elif change > max_regression:
                verdict = "slower, within spread"
            elif change < -max_regression and cur["p90_ms"] < old["p10_ms"]:
                verdict = "faster"
            else:
                verdict = "ok"
            out.append((r["resolution"], name, old["median_ms"], cur["median_ms"], change, verdict))
    return out, regressed
