"""Software prefetch of the weight streams of tuned CPU kernels.

Where a model's weights do not fit in the last-level cache (resnet18's 47 MB, resnet50's 102 MB), every
layer reads its weights from memory on every run. At small resolutions a layer does little arithmetic
per weight byte, and MetaSchedule's kernels, which issue their loads only when the FMAs need them, then
wait on memory: resnet18's stage-4 convolution at 112 takes ~200 us with its 9.4 MB of weights in cache
and ~300 us without, where perfect overlap of the two would take ~210 (benchmarks/README.md). Telling
the CPU a few KB ahead which weights come next closes most of that gap.

Two steps, both at build time, neither in the search space (tuning measures kernels warm, where the
prefetch has nothing to hide):

1. ``accumulate_per_task``: replay a tuned record with the reduction's output cached per task (the
   outer, parallel loop), so the accumulators are a small buffer each task allocates, not a slice of
   the whole output. Weights read in the innermost reduction loop are layout-free (prepacked in the
   order the loop reads them), so their address advances by a constant stride per step.
2. ``PrefetchWeights``, a TIR pass after TVM's own lowering (pipeline ``"tunekit"``): in each parallel
   loop, for the innermost serial loops that read a large (>= 1 MiB) parameter buffer at a constant
   stride of at least a cache line per step and store only into buffers allocated in that parallel
   body (the accumulators), put those buffers on the stack (TVM otherwise gives anything of 1 KB or
   more a TVMBackendAllocWorkspace block, through which LLVM cannot tell that the prefetch does not
   read the accumulators, and then stops holding them in registers: the loop runs 2.5x slower) and
   insert ``llvm.prefetch`` of the lines the loop will read ``AHEAD_BYTES`` further on. A loop whose step
   reads more lines than ``MAX_LINES_PER_STEP`` (stage 4's stride-2 3x3 reads a 9 KB block a step, in
   loops of 3 too short to prefetch from) has them spread over the iterations of the loops inside it.

The prefetch's cache hint follows the kernel's arithmetic per weight byte (its workload's FLOPs, which
``apply_to_tuned`` records on each tuned function): a kernel doing less than ``MAX_NTA_FLOP_PER_BYTE``
(about these hosts' machine balance: znver5's 2 cores do 476 GFLOP/s against 44 GB/s, 10.8) is bound
by its weights' trip and gets non-temporal prefetches (``prefetchnta``), which on znver5 keep those
weights from evicting what the other layers read again; the rest prefetch into every level (their many
output tiles re-read the weights: at resnet18 448 non-temporal stage-4 weights ran 6% slower).
resnet18's and resnet50's stage 4 at 112 (4x4 images, 8 FLOPs a byte) and the classifiers are the
former: resnet18 at 112 ran ~9% faster with it (benchmarks/README.md, session 22).
"""

from __future__ import annotations

import itertools
import logging
import math

log = logging.getLogger(__name__)

PIPELINE = "tunekit"  # tvm.compile(..., tir_pipeline=PIPELINE)
AHEAD_BYTES = 16384  # how far ahead of the loop's reads (benchmarks/README.md: 8-32 KB alike on znver5)
LOCALITY = 3  # llvm.prefetch's hint: into every cache level
LOCALITY_STREAMED = 0  # for memory-bound kernels: non-temporal
MAX_NTA_FLOP_PER_BYTE = 12  # kernels doing fewer FLOPs than this per weight byte stream them non-temporally
FLOPS_ATTR = "tunekit.flops"  # PrimFunc attribute: the workload's FLOPs (set by apply_to_tuned)
MIN_STREAM_BYTES = 1 << 20  # weights of less than this stay in L2 between tasks: nothing to hide
MAX_STACK_BYTES = 16384  # accumulators above this stay where TVM puts them (and the loop unprefetched)
MAX_LINES_PER_STEP = 16  # prefetches in one loop step at most (more lines are spread over the loops inside)
_LINE = 64
_DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # TVM's kDisableLowerTVMBuiltin: keep an allocation on the stack


def accumulate_per_task(mod, trace, name: str, target):
    """``trace`` replayed on the one-function ``mod`` with the output of each reduction block that reads a
    layout-free argument cached per task; None where that does not apply (the trace caches its output
    already, or no block qualifies). Raises ValueError as ``fallback.replay`` does."""
    from tunekit import fallback

    func = mod["main"]
    free = {func.params[int(i)].name for i in (func.attrs.get("layout_free_buffers") or [])}
    blocks = [n.name_hint for n in _nodes(func.body, "SBlock")
              if n.init is not None and any(r.source.name in free for r in n.reads)]
    if not blocks or any(inst.kind.name == "CacheWrite" for inst in trace.insts):
        return None
    _, postprocs = fallback.design_spaces(mod, target, name)
    return fallback.replay(mod, trace, postprocs, edit=lambda sch: [_cache_per_task(sch, b) for b in blocks])


def _cache_per_task(sch, block: str) -> None:
    """Cache ``block``'s output in a buffer written back after its reduction loops (under the loops outside
    them, which the post-processing fuses into the parallel one)."""
    from tvm import tirx

    handle = sch.get_sblock(block)
    loops = sch.get_loops(handle)
    realize = next(r for r in _nodes(sch.mod["main"].body, "SBlockRealize") if r.block.name_hint == block)
    reduce_vars = {v.name for iv, value in zip(realize.block.iter_vars, realize.iter_values)
                   if iv.iter_type == tirx.IterVar.CommReduce for v in _nodes(value, "Var")}
    first = next(i for i, loop in enumerate(loops) if sch.get(loop).loop_var.name in reduce_vars)
    write_back = sch.cache_write(handle, 0, "global")
    if first > 0 and not any(sch.get(loop).same_as(sch.get(loops[first - 1])) for loop in sch.get_loops(write_back)):
        sch.reverse_compute_at(write_back, loops[first - 1])


def apply_to_tuned(before, after, names: list[str], target, db) -> list[str]:
    """Replace each tuned function ``names`` of the module ``after`` (``before`` with the database applied)
    by its record replayed with per-task accumulators, each marked with its workload's FLOPs
    (``FLOPS_ATTR``). Returns the names replaced."""
    from tvm.s_tir.analysis import estimate_tir_flops

    from tunekit import fallback

    done = []
    for name in names:
        task = fallback.task_module(before[name])
        flops = float(estimate_tir_flops(task))
        after[name] = after[name].with_attr(FLOPS_ATTR, flops)
        record = db.query_tuning_record(task, target, name)
        sch = built_schedule(task, record.trace, name, target) if record is not None else None
        if sch is not None:
            after[name] = fallback.as_scheduled(sch, name).with_attr(FLOPS_ATTR, flops)
            done.append(name)
    return done


def built_schedule(mod, trace, name: str, target):
    """What the build compiles for a tuned record of the one-function ``mod``: ``trace`` replayed with
    per-task accumulators where ``PrefetchWeights`` then finds a weight stream to prefetch, else None
    (the record stays as tuned)."""
    try:
        sch = accumulate_per_task(mod, trace, name, target)
    except ValueError as exc:
        log.info("%s: no per-task accumulators: %s", name, exc)
        return None
    return sch if sch is not None and _prefetched(sch.mod, target) else None


def _prefetched(mod, target) -> bool:
    """Whether ``PrefetchWeights`` finds a weight stream to prefetch in the scheduled one-function ``mod``
    (lowered here on its own): a kernel it would leave alone keeps its tuned schedule as it was."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    try:
        func = lowered(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target)
        return bool(prefetch_weights(func)[1])
    except Exception as exc:  # TVM's lowering rejects it: keep the tuned schedule
        log.info("per-task accumulators do not lower: %s", str(exc).strip().splitlines()[-1][:200])
        return False


def lowered(mod, target):
    """The one PrimFunc of ``mod`` after TVM's default lowering for ``target``: what ``PrefetchWeights`` sees."""
    import tvm

    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(mod)
    lower, _, _ = tvm.tirx.get_tir_pipeline("s_tir")
    return next(f for f in lower(mod).functions.values() if isinstance(f, tvm.tirx.PrimFunc))


# --- the TIR pass. TVM 0.27's Python has no statement visitor or mutator: these walk and rebuild the
# few node kinds that hold statements (For, SeqStmt, AttrStmt, IfThenElse, While); the rest are leaves.

_FIELDS = ("body", "seq", "then_case", "else_case", "block", "init", "a", "b", "value", "args", "indices", "base",
           "condition", "true_value", "false_value", "vectors", "stride", "extent", "min")


def _children(node):
    import tvm_ffi

    for field in _FIELDS:
        child = getattr(node, field, None) if hasattr(node, field) else None
        if child is None or isinstance(child, (str, int, float)):
            continue
        if isinstance(child, tvm_ffi.core.Object) and type(child).__name__ != "Array":
            yield child
        elif type(child).__name__ in ("Array", "list", "tuple"):
            yield from (c for c in child if isinstance(c, tvm_ffi.core.Object))


def _nodes(root, *kinds):
    """Every node under ``root`` (itself included) whose class is one of ``kinds``, in pre-order."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if type(node).__name__ in kinds:
            out.append(node)
        stack.extend(reversed(list(_children(node))))
    return out


def _rebuild(stmt, fn):
    """``stmt`` with ``fn`` applied bottom-up: ``fn(node)`` returns a replacement or None to keep it."""
    from tvm import tirx

    kind = type(stmt).__name__
    if kind == "For":
        body = _rebuild(stmt.body, fn)
        if not body.same_as(stmt.body):
            stmt = _with_body(stmt, body)
    elif kind == "SeqStmt":
        seq = [_rebuild(s, fn) for s in stmt.seq]
        if any(not a.same_as(b) for a, b in zip(seq, stmt.seq)):
            stmt = tirx.SeqStmt(seq)
    elif kind == "AttrStmt":
        body = _rebuild(stmt.body, fn)
        if not body.same_as(stmt.body):
            stmt = tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body)
    elif kind == "IfThenElse":
        then = _rebuild(stmt.then_case, fn)
        other = _rebuild(stmt.else_case, fn) if stmt.else_case is not None else None
        if not then.same_as(stmt.then_case) or (other is not None and not other.same_as(stmt.else_case)):
            stmt = tirx.IfThenElse(stmt.condition, then, other)
    elif kind == "While":
        body = _rebuild(stmt.body, fn)
        if not body.same_as(stmt.body):
            stmt = tirx.While(stmt.condition, body)
    new = fn(stmt)
    return stmt if new is None else new


def _with_body(loop, body):
    from tvm import tirx

    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations,
                    loop.step)


def _buffer(load):
    return load.buffer if hasattr(load, "buffer") else load.source  # BufferLoad / TensorLoad


def _nbytes(buf) -> int | None:
    from tvm import tirx

    if not all(isinstance(x, tirx.IntImm) for x in buf.shape):
        return None
    return math.prod(int(x) for x in buf.shape) * buf.dtype.bits * max(1, buf.dtype.lanes) // 8


def _prefetches(loop, allocated: dict, analyzer, flops: float | None = None):
    """``loop`` with its weight streams prefetched, the names of the buffers it stores into and what was
    done, or None. ``flops``: the kernel's, if known (they choose the cache hint). A stream whose step
    reads more than ``MAX_LINES_PER_STEP`` lines (a stride-2 3x3 convolution reads a 9 KB block a
    step) has its prefetches spread over the iterations of the loops nested right inside ``loop``."""
    from tvm import tirx
    from tvm.sym import detect_linear_equation

    if loop.kind != tirx.ForKind.SERIAL or not isinstance(loop.extent, tirx.IntImm) or int(loop.extent) < 8:
        return None
    stored = {s.buffer.name for s in _nodes(loop.body, "BufferStore")}
    if not stored or any(n not in allocated or (_nbytes(allocated[n]) or MAX_STACK_BYTES + 1) > MAX_STACK_BYTES
                         for n in stored):
        return None
    inner = {n.loop_var.name: n for n in _nodes(loop.body, "For")}
    bound = {n.var.name for n in _nodes(loop.body, "Bind")}
    streams: dict[str, list] = {}
    for load in _nodes(loop.body, "BufferLoad", "TensorLoad"):
        buf = _buffer(load)
        if buf.name in allocated or len(load.indices) != 1 or (_nbytes(buf) or 0) < MIN_STREAM_BYTES:
            continue
        index = load.indices[0]
        start, lanes = (index.base, int(index.lanes)) if type(index).__name__ == "Ramp" else (index, 1)
        start = analyzer.simplify(start)
        used = {v.name: v for v in _nodes(start, "Var")}
        if bound & set(used):
            continue
        loops = [inner[n] for n in sorted(used) if n in inner]
        linear = detect_linear_equation(start, [loop.loop_var] + [f.loop_var for f in loops])
        if len(linear) != len(loops) + 2 or not all(isinstance(c, tirx.IntImm) for c in linear[:-1]):
            continue
        streams.setdefault(buf.name, []).append((int(linear[0]), [int(c) for c in linear[1:-1]], loops, linear[-1],
                                                 lanes, buf))
    top, spread, done = [], [], []
    chain = _perfect_nest(loop.body)
    iterations = math.prod(int(f.extent) for f in chain)
    step = sum((f.loop_var - f.min) * math.prod(int(g.extent) for g in chain[i + 1:]) for i, f in enumerate(chain))
    for reads in streams.values():
        stride, _, _, rest, _, buf = reads[0]
        element = buf.dtype.bits // 8
        per_line = _LINE // element
        if any(r[0] != stride for r in reads) or stride * element < _LINE:
            continue
        offsets = set()  # elements read in one step, from ``rest``: every value of the loops inside
        for _, coefs, loops, other, lanes, _ in reads:
            shift = analyzer.simplify(other - rest)
            if (not isinstance(shift, tirx.IntImm) or not all(isinstance(f.min, tirx.IntImm) and isinstance(f.extent, tirx.IntImm)
                                                               for f in loops)
                    or math.prod(int(f.extent) for f in loops) > 64):
                offsets = None
                break
            for values in itertools.product(*(range(int(f.min), int(f.min) + int(f.extent)) for f in loops)):
                at = int(shift) + sum(c * v for c, v in zip(coefs, values))
                offsets.update(range(at, at + lanes, per_line), (at + lanes - 1,))
        if not offsets:
            continue
        lines = sorted({o // per_line for o in offsets} | set(range(min(offsets) // per_line, (min(offsets) + stride - 1) // per_line + 1)))
        ahead = max(1, round(AHEAD_BYTES / (stride * element)))
        locality = LOCALITY_STREAMED if flops and flops < MAX_NTA_FLOP_PER_BYTE * _nbytes(buf) else LOCALITY

        def prefetch(line):  # a line of the block read ``ahead`` steps on
            address = tirx.address_of(tirx.BufferLoad(buf, [rest + stride * (loop.loop_var + ahead) + line * per_line]))
            return tirx.Evaluate(tirx.call_llvm_intrin(
                "void", "llvm.prefetch.p0", address, tirx.const(0, "int32"), tirx.const(locality, "int32"),
                tirx.const(1, "int32")))

        if len(lines) <= MAX_LINES_PER_STEP:
            top += [prefetch(line) for line in lines]
            done.append(f"{len(lines)} lines a step")
        elif lines == list(range(lines[0], lines[-1] + 1)) and -(-len(lines) // iterations) <= MAX_LINES_PER_STEP:
            per = -(-len(lines) // iterations)  # the last iterations may reach into the next block: harmless
            spread += [prefetch(lines[0] + step * per + j) for j in range(per)]
            done.append(f"{len(lines)} lines a step, {per} in each of {iterations} inner iterations")
    if not done:
        return None
    body = loop.body
    if spread:
        body = tirx.SeqStmt(spread + [chain[-1].body])
        for f in reversed(chain):
            body = _with_body(f, body)
    if top:
        body = tirx.SeqStmt(top + [body])
    return _with_body(loop, body), stored, "; ".join(done)


def _perfect_nest(stmt) -> list:
    """The loops of constant bounds nested one right inside the other from ``stmt`` (none if it is no loop)."""
    from tvm import tirx

    chain = []
    while type(stmt).__name__ == "For" and isinstance(stmt.min, tirx.IntImm) and isinstance(stmt.extent, tirx.IntImm):
        chain.append(stmt)
        stmt = stmt.body
    return chain


def prefetch_weights(func):
    """``func`` with its weight streams prefetched (see the module's docstring), and the loops it changed."""
    from tvm import tirx
    from tvm.sym import Analyzer

    analyzer = Analyzer()
    changed = []
    flops = func.attrs.get(FLOPS_ATTR) if func.attrs is not None else None

    def in_parallel(par):
        allocated = {a.buffer.name: a.buffer for a in _nodes(par.body, "AllocBuffer")}
        for bind in _nodes(par.body, "Bind"):  # CommonSubexprElim's let-bound indices: resolve to loop variables
            analyzer.bind(bind.var, bind.value)
        keep = set()
        prefetching = []  # the loops given prefetches so far (bottom-up: inner loops first)

        def loop(node):
            if type(node).__name__ != "For" or node.same_as(par):
                return None
            if any(inner.same_as(done) for inner in _nodes(node.body, "For") for done in prefetching):
                return None  # a loop inside it prefetches already
            found = _prefetches(node, allocated, analyzer, None if flops is None else float(flops))
            if found is None:
                return None
            new, stored, done = found
            keep.update(stored)
            changed.append(f"{node.loop_var.name} (x{int(node.extent)}, {done})")
            prefetching.append(new)
            return new

        body = _rebuild(par.body, loop)
        if not keep:
            return None
        body = _rebuild(body, lambda n: tirx.AllocBuffer(n.buffer, {_DISABLE_LOWER_BUILTIN: tirx.const(True, "bool")})
                        if type(n).__name__ == "AllocBuffer" and n.buffer.name in keep else None)
        return _with_body(par, body)

    body = _rebuild(func.body, lambda n: in_parallel(n) if type(n).__name__ == "For"
                    and n.kind == tirx.ForKind.PARALLEL else None)
    return (func if body.same_as(func.body) else func.with_body(body)), changed


def _pass():
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="tunekit.PrefetchWeights")
    def prefetch_pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tirx.PrimFunc):
                new, changed = prefetch_weights(func)
                if changed:
                    log.debug("%s: prefetch in %s", gv.name_hint, ", ".join(changed))
                    mod[gv] = new
        return mod

    return prefetch_pass


def register_pipeline() -> str:
    """Register TIR pipeline ``PIPELINE`` (TVM's default one, then ``PrefetchWeights``) once; returns its name."""
    import tvm
    from tvm.tirx import compilation_pipeline as pipelines

    if PIPELINE in pipelines.PIPELINE_MAP:
        return PIPELINE

    def factory():
        lower, finalize_host, finalize_device = pipelines.get_tir_pipeline("s_tir")
        return tvm.transform.Sequential([lower, _pass()]), finalize_host, finalize_device

    pipelines.register_tir_pipeline(PIPELINE, factory)
    return PIPELINE
