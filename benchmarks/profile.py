"""Where a tuned model's time goes: per task, the best measured kernel time from a tuning database,
and with --ort, ONNX Runtime's own per-node profile of the same graph beside it.

    python benchmarks/profile.py --model resnet18 --res 112 --db tuning_logs/reference-znver4-2c.db --ort
    python benchmarks/profile.py --model resnet18 --res 112 --db DB --artifact out/artifacts
    python benchmarks/profile.py --model resnet50 --res 224 --db DB --cold
    python benchmarks/profile.py --model resnet18 --res 112 --db DB --retile TASK --tiles "2=1,2,2,1"

Prepares the model as tune and build do (the target's layout and Winograd choice), looks up each
runtime task's best record (its tuning measurement: kernel alone, weights warm in cache, so the sum
underestimates a whole run), and prints time x uses and share of the sum. Tasks with no record
print '-'. --ort runs the same ONNX graph in ONNX Runtime (CPU provider, the target's threads,
profiling on) --runs times and prints each node's median time, largest first: the libraries'
figure to hold each TVM task against. --artifact runs a built library (`tunekit build` output)
--runs times with a timer around every call the Relax VM makes (kernels and allocations) and prints
each callee's median time per run beside the whole run's median without the timer: what the kernels
take in the real run (cold from the previous layer, not warm as in tuning) and what is left over
(the VM, allocation, thread-pool wake-ups). --cold measures each task's best record again, warm (as
tuning does) and with MetaSchedule's CPU cache flush before each of 20 single calls (every argument
but the first cold: the weights as a layer finds them in a whole run of a model whose weights do not
fit in cache, its input warm from the layer before), then the same two ways as `tunekit build` builds
it (the weight prefetch of ``tunekit.prefetch``): the cold figure to hold against --artifact's.
--retile TASK measures one task's best record the same two ways as tuned, and again with each --tiles
variant of its tile sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile


def ort_profile(graph, threads: int, runs: int) -> list[tuple[str, str, float]]:
    """ONNX Runtime's per-node times for ``graph``: (node name, op type, median us over ``runs`` runs)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).standard_normal(inp.shape, dtype=np.float32)}
    for _ in range(5):  # warm-up, dropped below
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    times: dict[tuple[str, str], list[float]] = {}
    for e in events:
        times.setdefault((e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?")), []).append(e["dur"])
    return sorted(((name, op, statistics.median(d[5:] or d)) for (name, op), d in times.items()),
                  key=lambda r: -r[2])


def vm_profile(artifact, runs: int) -> tuple[float, list[tuple[str, int, float]]]:
    """A loaded artifact's (``tunekit.runtime.load``) whole-run median (us, no timer) and per callee
    (name, calls per run, median us per run)."""
    from tunekit.common import sample_input
    from tunekit.racing import run_seconds
    from tunekit.rerank import call_times

    x = sample_input(artifact.input["shape"])
    whole = [s * 1e6 for s in run_seconds(artifact, x, runs)]
    per_run, calls = call_times(artifact, x, runs)
    rows = [(symbol, calls[symbol], statistics.median(t)) for symbol, t in per_run.items()]
    return statistics.median(whole), sorted(rows, key=lambda r: -r[2])


COLD_REPEATS = 20


def _measurers(spec):
    """A builder and the two runners ``--cold`` times with: tune's warm protocol, and single calls
    after MetaSchedule's CPU cache flush."""
    from tvm.s_tir import meta_schedule as ms

    from tunekit.targets import default_threads
    from tunekit.tuning import Measurement, build_candidate, make_runner

    os.environ["TVM_NUM_THREADS"] = str(default_threads(spec))  # the runner's workers start TVM's pool with it
    builder = ms.builder.LocalBuilder(max_workers=1, f_build=build_candidate)
    # The flush runs before each repeat, not each call: cold must be one call a repeat (number 1, no
    # minimum repeat time), or min_repeat_ms makes the repeat tens of warm calls after one flush.
    protocols = {False: Measurement(), True: Measurement(repeat=COLD_REPEATS, min_repeat_ms=0, cpu_cache_flush=True)}
    return builder, {cold: make_runner(spec, protocols[cold], None) for cold in (False, True)}


def _warm_cold(record, trace, target, builder, runners) -> tuple[float, float] | None:
    """(warm us, cold us) of ``trace`` applied to ``record``'s workload, or None if it fails."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    sch = tvm.s_tir.Schedule(record.workload.mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg:
        return None
    times = []
    for cold in (False, True):
        (future,) = runners[cold].run([ms.runner.RunnerInput(built.artifact_path, "cpu", info)])
        result = future.result()
        if result.error_msg:
            return None
        times.append(statistics.median(float(x) for x in result.run_secs) * 1e6)
    return times[0], times[1]


def _best_record(db, task):
    """``task``'s best record in ``db``, or None."""
    wid = db.find_workload(task.mod)
    best = db.best_records(wid, 1) if wid is not None else []
    return best[0][1] if best else None


def time_library(path: str, runners, info) -> tuple[float, float]:
    """(warm us, cold us) of an exported kernel taking ``info``'s arguments, with ``_measurers``' runners."""
    from tvm.s_tir import meta_schedule as ms

    times = []
    for cold in (False, True):
        (future,) = runners[cold].run([ms.runner.RunnerInput(path, "cpu", info)])
        result = future.result()
        if result.error_msg:
            raise SystemExit(f"{path}: {result.error_msg.strip().splitlines()[-1]}")
        times.append(statistics.median(float(s) for s in result.run_secs) * 1e6)
    return times[0], times[1]


def build_as_tunekit_does(task, record, target, path: str):
    """``record`` built as ``tunekit build`` builds it on a CPU (``tunekit.prefetch.built_schedule``, its FLOPs
    recorded for the cache hint, the prefetch pipeline), exported to ``path``; returns (its argument info,
    whether the prefetch applied)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from tunekit import prefetch

    sch = prefetch.built_schedule(task.mod, record.trace, task.name, target)
    prefetched = sch is not None
    if not prefetched:
        sch = tvm.s_tir.Schedule(task.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
    mod = sch.mod
    mod["main"] = mod["main"].with_attr(prefetch.FLOPS_ATTR, float(estimate_tir_flops(task.mod)))
    info = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
    tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target,
                   pipeline=prefetch.register_pipeline()).export_library(path)
    return info, prefetched


def warm_and_cold(db, tasks, spec) -> dict[str, tuple[float, float, float, float, bool]]:
    """Per task name with a record: its best record measured again here on ``spec``'s threads, as tune
    measures, warm and cache-flushed, then the same built as ``tunekit build`` builds it (the weight
    prefetch), warm and cache-flushed, and whether the prefetch applied: (warm us, cold us, built warm
    us, built cold us, prefetched)."""
    builder, runners = _measurers(spec)
    target = spec.tvm_target()
    workdir = tempfile.mkdtemp(prefix="tunekit-profile-")
    out = {}
    for task in tasks:
        record = _best_record(db, task)
        times = _warm_cold(record, record.trace, target, builder, runners) if record else None
        if times is None:
            continue
        path = os.path.join(workdir, f"{task.name}.so")
        info, prefetched = build_as_tunekit_does(task, record, target, path)
        out[task.name] = (*times, *time_library(path, runners, info), prefetched)
    return out


def retiled(db, task, spec, variants: list[dict[int, list[int]]]) -> list[tuple[str, tuple[float, float] | None]]:
    """``task``'s best record and the same record with other tile sizes (per variant: the index of a
    SamplePerfectTile instruction in its trace -> the factors it takes instead), each (label, (warm us,
    cold us)): which loop split the threads share the weights by, the accumulator block, and so on."""
    record = _best_record(db, task)
    if record is None:
        raise SystemExit(f"{task.name} has no record in the database")
    tiles = [inst for inst in record.trace.insts if inst.kind.name == "SamplePerfectTile"]
    best = {i: [int(d) for d in record.trace.decisions[t]] for i, t in enumerate(tiles)}

    def label(decisions: dict[int, list[int]]) -> str:
        return " ".join(f"{i}={','.join(map(str, f))}" for i, f in decisions.items())

    traces = [(f"best ({label(best)})", record.trace)]
    for variant in variants:
        trace = record.trace
        for index, factors in variant.items():
            if index not in best:
                raise SystemExit(f"--tiles: {task.name}'s trace has tile decisions 0..{len(tiles) - 1}, not {index}")
            if math.prod(factors) != math.prod(best[index]):
                raise SystemExit(f"--tiles {index}={','.join(map(str, factors))}: the factors must multiply to the "
                                 "loop's extent, as its best record's do")
            trace = trace.with_decision(tiles[index], factors, False)
        traces.append((label(variant), trace))
    builder, runners = _measurers(spec)
    return [(name, _warm_cold(record, trace, spec.tvm_target(), builder, runners)) for name, trace in traces]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--db", required=True)
    parser.add_argument("--target", default="host")
    parser.add_argument("--ort", action="store_true", help="Also ONNX Runtime's per-node profile.")
    parser.add_argument("--cold", action="store_true", help="Also measure each task's best record again, warm "
                        "and with the CPU cache flushed, as tuned and as built (the weight prefetch).")
    parser.add_argument("--retile", metavar="TASK", help="Measure TASK's best record warm and cold, and again "
                        "with each --tiles variant.")
    parser.add_argument("--tiles", action="append", default=[], metavar="I=F,F,..[ I=..]",
                        help="With --retile, one variant: the I-th tile decision of the best record's trace "
                        "(as printed on its 'best' line) takes the factors F (their product unchanged).")
    parser.add_argument("--runs", type=int, default=30, help="Runs of the ONNX Runtime and --artifact profiles.")
    parser.add_argument("--artifact", metavar="DIR", help="Also time every call of this built library (tunekit build "
                        "--out DIR) at --res in the Relax VM.")
    args = parser.parse_args()

    from tunekit import database, frontend
    from tunekit.keys import Key
    from tunekit.targets import default_threads, resolve_target

    spec = resolve_target(args.target)
    target = spec.tvm_target()
    key = Key(args.model, args.res, args.res)
    graph = frontend.onnx_graph(key, model=args.model)
    tasks, _ = frontend.tasks_of(graph, target, spec.conv_layout, spec.conv_winograd)
    db = database.open_database(args.db, target)
    rows = []
    for task in tasks:
        wid = db.find_workload(task.mod)
        sec = db.best_sec(wid) if wid is not None else None
        rows.append((task.name, task.weight, None if sec is None else sec * 1e6 * task.weight))
    total = sum(us for _, _, us in rows if us is not None)
    print(f"{args.model} at {args.res} on {spec.name} ({spec.tvm.get('mcpu', '')}), layout {spec.conv_layout}, "
          f"winograd {spec.conv_winograd}: sum of best kernel times {total / 1000:.2f} ms")
    for name, uses, us in sorted(rows, key=lambda r: -(r[2] or 0)):
        share = f"{100 * us / total:5.1f}%" if us is not None else "    -"
        print(f"  {share}  {us or 0:8.1f} us  x{uses}  {name}")
    if args.retile:
        task = next((t for t in tasks if t.name == args.retile), None)
        if task is None:
            raise SystemExit(f"no task {args.retile} at {args.res}: {', '.join(t.name for t in tasks)}")
        try:
            variants = [{int(i): [int(f) for f in fs.split(",")] for i, fs in (part.split("=") for part in v.split())}
                        for v in args.tiles]
        except ValueError:
            raise SystemExit(f"--tiles takes 'I=F,F,..' parts separated by spaces, e.g. \"2=1,2,2,1\": {args.tiles}")
        print(f"{task.name}, tile decisions of its best record and variants: us a call, warm and cache-flushed")
        for label, times in retiled(db, task, spec, variants):
            print(f"  {label}: " + (f"warm {times[0]:.1f}  cold {times[1]:.1f}" if times else "failed to build or run"))
    if args.cold:
        times = warm_and_cold(db, tasks, spec)
        measured = sorted(((t, *times[t.name]) for t in tasks if t.name in times), key=lambda r: -r[4] * r[0].weight)
        sums = [sum(row[i] * row[0].weight for row in measured) / 1000 for i in (1, 2, 3, 4)]
        print(f"best records measured again, x uses, warm / cache flushed: as tuned {sums[0]:.2f} / {sums[1]:.2f} ms, "
              f"as built (weight prefetch) {sums[2]:.2f} / {sums[3]:.2f} ms")
        for task, w, c, bw, bc, prefetched in measured:
            print(f"  tuned {w * task.weight:8.1f} / {c * task.weight:8.1f} us  built {bw * task.weight:8.1f} / "
                  f"{bc * task.weight:8.1f} us  x{task.weight}  {task.name}{'' if prefetched else ' (no prefetch)'}")
    if args.ort:
        nodes = ort_profile(graph, default_threads(spec), args.runs)
        ort_total = sum(us for _, _, us in nodes)
        print(f"ONNX Runtime, {default_threads(spec)} threads, median of {args.runs} runs: sum of node times "
              f"{ort_total / 1000:.2f} ms")
        for name, op, us in nodes:
            print(f"  {100 * us / ort_total:5.1f}%  {us:8.1f} us  {op:12s} {name}")
    if args.artifact:
        from tunekit.runtime import load, read_manifest

        entry = next((e for e in read_manifest(args.artifact)["artifacts"]
                      if e["model"] == args.model and tuple(e["resolution"]) == (args.res, args.res)), None)
        if entry is None:
            raise SystemExit(f"{args.artifact} has no {args.model} artifact at {args.res}x{args.res}")
        artifact = load(args.artifact, entry["file"])  # sha256, TVM version and ISA checked; the target's threads
        whole, calls = vm_profile(artifact, args.runs)
        timed = sum(us for _, _, us in calls)
        print(f"{entry['file']} in the Relax VM, {artifact.threads} threads, median of {args.runs} runs: "
              f"{whole / 1000:.2f} ms a run; with a timer round every call, the calls' sum {timed / 1000:.2f} ms "
              f"(kernels and allocations); outside any call {max(whole - timed, 0) / 1000:.2f} ms")
        for symbol, n, us in calls:
            print(f"  {100 * us / whole:5.1f}%  {us:8.1f} us  x{n}  {symbol}")


if __name__ == "__main__":
    main()
