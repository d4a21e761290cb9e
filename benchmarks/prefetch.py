"""Does a software prefetch of the weights pay where a layer streams them from memory? One kernel, by hand.

    python benchmarks/prefetch.py --db tuning_logs/reference-znver5-2c.db
    python benchmarks/prefetch.py --db DB --ahead 0,64 --locality 3 --rounds 3

resnet18's stage-4 3x3 convolution at 112 (512 -> 512 channels on 4x4 pixels, bias, residual add and
ReLU: ``fused_conv2d8_add7_add8_relu4``) reads 9.4 MB of weights for 75 MFLOP, so in a whole run (whose
47 MB of weights do not fit in the L3) its weights come from memory. This script times, warm (as tune
measures) and with the CPU cache flushed before each call (as a whole run finds the weights):

- the tuned kernel: the task's best record in --db, as tuned and as `tunekit build` builds it
  (``tunekit.prefetch``: replayed with per-task accumulators, then the prefetch pass);
- the same computation written by hand in TIR with the tuned record's tiling on AVX-512 (16 tasks of
  4x2 pixels x 64 channels, weights prepacked in the order they are read, 32 vector accumulators),
  without prefetch and with ``llvm.prefetch`` of the weights --ahead reduction steps (256 B each)
  ahead, 4 cache lines a step, at each --locality (3: all caches, 2: L2 and out, 1: L3).

The hand kernel keeps its accumulators in eight 256-byte buffers, which TVM puts on the stack (it
gives a buffer of 1 KB or more, or of scope "local", a TVMBackendAllocWorkspace heap block): LLVM
then holds them in registers whatever else the loop does. The tuned kernel accumulates into a 32 KB
workspace block; a prefetch call inside its reduction loop stops LLVM from keeping those in registers
(it cannot prove the call does not read them), so the same prefetch there makes it 2.5x slower
(benchmarks/README.md, session 20). Each kernel is checked against a NumPy reference before it is
timed. Prints each round's warm and cold microseconds a call and the median over rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

TASK = "fused_conv2d8_add7_add8_relu4"
SHAPES = {"x": (1, 4, 4, 512), "w": (8, 3, 3, 512, 64), "b": (8, 64), "r": (1, 4, 4, 512), "out": (1, 4, 4, 512)}


def hand_kernel(ahead: int, locality: int) -> str:
    """TVMScript of the hand-written kernel; ``ahead`` 0 for no prefetch."""
    accs = [(y, x) for y in range(4) for x in range(2)]
    lines = [
        "@T.prim_func",
        "def main(x: T.Buffer((1, 4, 4, 512), 'float32'), w: T.Buffer((8, 3, 3, 512, 64), 'float32'),",
        "         b: T.Buffer((8, 64), 'float32'), r: T.Buffer((1, 4, 4, 512), 'float32'),",
        "         out: T.Buffer((1, 4, 4, 512), 'float32')):",
        "    T.func_attr({'tir.noalias': True, 'global_symbol': 'main'})",
        "    flat = T.decl_buffer((8 * 9 * 512 * 64,), 'float32', data=w.data)",
        "    for p in T.parallel(16):",  # p // 8: which 2 of the 4 columns, p % 8: which 64 output channels
        "        pad = T.decl_buffer((6 * 4 * 512,), 'float32')",  # the 6 x 4 padded input pixels this task reads
        *[f"        acc{y}{x} = T.decl_buffer((64,), 'float32')" for y, x in accs],
        "        for h, c, k in T.grid(6, 4, 32):",
        "            for k1 in T.vectorized(16):",
        "                pad[(h * 4 + c) * 512 + k * 16 + k1] = T.if_then_else(1 <= h and h < 5 and 1 <= p // 8 * 2 + c",
        "                    and p // 8 * 2 + c < 5, x[0, h - 1, p // 8 * 2 + c - 1, k * 16 + k1], T.float32(0))",
        *[line for y, x in accs for line in (f"        for f in T.vectorized(64):", f"            acc{y}{x}[f] = T.float32(0)")],
        "        for ry, rx, rc in T.grid(3, 3, 512):",
        *[f"            T.evaluate(T.call_llvm_intrin('void', 'llvm.prefetch.p0', T.address_of(flat[((p % 8 * 9 + ry * 3 + rx)"
          f" * 512 + rc + {ahead}) * 64 + {16 * line}]), 0, {locality}, 1))" for line in range(4) if ahead],
        *[line for y, x in accs for line in (
            "            for f in T.vectorized(64):",
            f"                acc{y}{x}[f] = acc{y}{x}[f] + pad[(({y} + ry) * 4 + {x} + rx) * 512 + rc] * w[p % 8, ry, rx, rc, f]")],
        *[line for y, x in accs for line in (
            "        for f in T.vectorized(64):",
            f"            out[0, {y}, p // 8 * 2 + {x}, p % 8 * 64 + f] = T.max(acc{y}{x}[f] + b[p % 8, f]"
            f" + r[0, {y}, p // 8 * 2 + {x}, p % 8 * 64 + f], T.float32(0))")],
    ]
    return "\n".join(lines)


def reference(x, w, b, r):
    """NumPy's result of the layer, with the weights in the kernel's packing [co // 64, ry, rx, ci, co % 64]."""
    weights = w.transpose(1, 2, 3, 0, 4).reshape(3, 3, 512, 512)
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    acc = sum(np.einsum("hwc,co->hwo", padded[ry:ry + 4, rx:rx + 4], weights[ry, rx]) for ry in range(3) for rx in range(3))
    return np.maximum(acc + b.reshape(512) + r[0], 0)[None]


def build_checked(text: str, target, path: str) -> None:
    """Build ``text``, check it against NumPy (raises if it differs), export it to ``path``."""
    import tvm
    from tvm.script import tirx as T

    lib = tvm.build(tvm.script.from_source(text, extra_vars={"T": T}), target=target)
    rng = np.random.default_rng(0)
    args = {name: rng.standard_normal(shape).astype("float32") for name, shape in SHAPES.items()}
    tensors = [tvm.runtime.tensor(args[name]) for name in SHAPES]
    lib["main"](*tensors)
    want = reference(args["x"], args["w"], args["b"], args["r"])
    np.testing.assert_allclose(tensors[-1].numpy(), want, rtol=1e-4, atol=1e-3)
    lib.export_library(path)


def load_profile_script():
    spec = importlib.util.spec_from_file_location("tunekit_profile", Path(__file__).with_name("profile.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="tuning database with a record of the task (resnet18 at 112)")
    parser.add_argument("--target", default="host")
    parser.add_argument("--ahead", default="0,64", help="comma-separated prefetch distances in reduction steps (0: none)")
    parser.add_argument("--locality", default="3", help="comma-separated llvm.prefetch locality hints (0-3)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from tvm.s_tir import meta_schedule as ms

    from tunekit import database, frontend
    from tunekit.keys import Key
    from tunekit.targets import resolve_target

    spec = resolve_target(args.target)
    target = spec.tvm_target()
    profile = load_profile_script()
    tasks, _ = frontend.tasks_of(frontend.onnx_graph(Key("resnet18", 112, 112), model="resnet18"), target,
                                 spec.conv_layout, spec.conv_winograd)
    task = next((t for t in tasks if t.name == TASK), None)
    record = profile._best_record(database.open_database(args.db, target), task) if task else None
    if record is None:
        raise SystemExit(f"{args.db} has no record of resnet18's {TASK} at 112 for {spec.name}")
    builder, runners = profile._measurers(spec)
    hand_info = [ms.arg_info.TensorInfo("float32", shape) for shape in SHAPES.values()]
    variants = sorted({(int(a), int(loc) if int(a) else 0) for a in args.ahead.split(",") for loc in args.locality.split(",")})
    workdir = tempfile.mkdtemp(prefix="tunekit-prefetch-")
    libraries = {}
    for ahead, locality in variants:
        path = os.path.join(workdir, f"hand-{ahead}-{locality}.so")
        build_checked(hand_kernel(ahead, locality), target, path)
        libraries[f"by hand, prefetch {ahead} steps ahead, locality {locality}" if ahead else "by hand, no prefetch"] = path
    built_path = os.path.join(workdir, "tuned-prefetched.so")
    built_info, prefetched = profile.build_as_tunekit_does(task, record, target, built_path)
    print(f"{TASK} (resnet18 at 112) on {spec.name} ({spec.tvm.get('mcpu', '')}): us a call, warm / cache flushed")
    rows: dict[str, list[tuple[float, float]]] = {"tuned (best record)": [], "tuned, as tunekit build builds it": [],
                                                  **{name: [] for name in libraries}}
    if not prefetched:
        print("  (tunekit.prefetch leaves this record alone)")
    for round_ in range(args.rounds):
        times = profile._warm_cold(record, record.trace, target, builder, runners)
        if times is None:
            raise SystemExit(f"the best record of {TASK} failed to build or run")
        rows["tuned (best record)"].append(times)
        rows["tuned, as tunekit build builds it"].append(profile.time_library(built_path, runners, built_info))
        for name, path in libraries.items():
            rows[name].append(profile.time_library(path, runners, hand_info))
        for name, samples in rows.items():
            print(f"  round {round_ + 1}  {name:48s} warm {samples[-1][0]:7.1f}  cold {samples[-1][1]:7.1f}", flush=True)
    print(f"median of {args.rounds} rounds:")
    for name, samples in rows.items():
        warm, cold = (statistics.median(s[i] for s in samples) for i in (0, 1))
        print(f"  {name:48s} warm {warm:7.1f}  cold {cold:7.1f}")


if __name__ == "__main__":
    main()
