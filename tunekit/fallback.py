"""Default schedules for TIR functions that have no tuning record.

Unscheduled TIR is not usable: on CPU it runs ~35x slower than PyTorch (one
thread, no vectors), on GPUs it does not build at all (no thread bindings).

- GPUs: TVM's dlight default rules.
- CPUs: MetaSchedule's own design space (the same rules tuning searches),
  with the random decisions replaced by a fixed register-blocking heuristic
  derived from the target's vector ISA (``VectorISA``): the last spatial loop
  (W of NCHW, N of a matmul) gets an innermost tile of up to one vector (16
  fp32 lanes on AVX-512, 8 on AVX2, 4 on SSE), the largest other spatial loop
  (the output channels) a block of accumulator vectors filling half the
  register file (16 of AVX-512's 32, 8 of AVX2's 16), reductions an inner tile
  of up to 8, and an unroll of 64. A 16-lane tile on AVX2 needed 16 accumulators
  and spilled: untuned resnet18 ran 2.1x slower on Zen 1 than with 8 lanes, and
  2.05-2.16x slower for haswell code on a Zen 4. On AVX-512, 16 channels instead
  of 8 made it 1.11x / 1.19x faster at 112 / 224 (same run, Zen 4).
  ResNet-18 with no records at all, against PyTorch on oneDNN
  (``tunekit bench --model resnet18 --res 112,224 --backends untuned,onednn
  --db none.db``, 2 Zen 4 cores): 10.0 vs 10.9 ms at 112, 43.0 vs 28.6 ms at
  224. Unscheduled it is ~500 ms at 112. If the heuristic's decisions do not
  verify for a function, the design space's own sample is used; if that fails
  too, the function is left to the compiler as is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("tunekit.fallback")

IS_SCHEDULED = "tirx.is_scheduled"


@dataclass(frozen=True)
class VectorISA:
    """What the register blocking needs to know of a CPU: fp32 lanes per vector register, and how many."""

    name: str
    lanes: int
    registers: int

    @property
    def channel_block(self) -> int:
        """Output channels held in registers at once: one accumulator vector each, half the register file
        (the rest holds inputs and weights): 16 on AVX-512, 8 on AVX2."""
        return min(16, self.registers // 2)


def vector_isa(target) -> VectorISA:
    """The vector ISA of an LLVM target, from the features LLVM enables for its mcpu / mattr."""
    from tvm.target import codegen

    features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    if "avx512f" in features:
        return VectorISA("avx512", 16, 32)
    if "avx" in features:
        return VectorISA("avx2" if "avx2" in features else "avx", 8, 16)
    if "neon" in features or "sse2" in features or "sse4.2" in features:
        return VectorISA("sse" if "neon" not in features else "neon", 4, 16 if "neon" not in features else 32)
    return VectorISA("scalar", 1, 16)


def _factor(extent: int, cap: int) -> int:
    """A factor of ``extent`` up to ``cap``: a power of two of at least cap/2 when one divides it,
    else the largest factor (a width of 70 gets 14, not 2: LLVM vectorises 14 lanes as 8+4+2)."""
    for p in (16, 8, 4, 2):
        if cap // 2 <= p <= cap and extent % p == 0:
            return p
    return max(d for d in range(1, min(extent, cap) + 1) if extent % d == 0)


def reuse_axes(mod) -> list[int | None]:
    """For each reduction block of a one-function module, in order: the spatial axis to hold a block of
    accumulators along, or None to leave the choice to the extents.

    The innermost tile of the last spatial axis (W of NCHW, N of a matmul) is the vector; the operands that
    axis indexes are loaded as vectors (the image for a convolution, B for a matmul). A block along an axis
    that does not index them reuses each vector load once per accumulator: the output channels of a
    convolution, whose extent (64) is smaller than the rows (112) of ResNet's 224 stem, where the largest
    extent chose the rows and ran at 14 GFLOP/s. None for depthwise convolutions, where every axis indexes
    the image.
    """
    import tvm
    from tvm.s_tir import Schedule

    undefined_vars = tvm.get_global_func("tirx.analysis.UndefinedVars")
    sch = Schedule(mod)
    axes = []
    for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
        block = sch.get(block_rv)
        if not any(int(iv.iter_type) == 2 for iv in block.iter_vars):
            continue
        spatial = [iv for iv in block.iter_vars if int(iv.iter_type) == 0]
        uses = [{str(v) for rg in r.region for v in undefined_vars(rg.min, [])} for r in block.reads]
        vector_loads = [u for u in uses if str(spatial[-1].var) in u]
        free = [k for k, iv in enumerate(spatial[:-1])
                if int(iv.dom.extent) > 1 and not any(str(iv.var) in u for u in vector_loads)]
        axes.append(max(free, key=lambda k: int(spatial[k].dom.extent)) if free else None)
    return axes


def heuristic_decisions(trace, isa: VectorISA = VectorISA("avx512", 16, 32),
                        axes: list[int | None] | None = None) -> dict:
    """Decisions for a CPU multi-level-tiling trace (SSRSRS) on ``isa``: instruction -> decision.

    Tile samples come per block as the spatial loops (4 levels each) followed by
    the reduction loops (2 levels each); extents are read from the sampled
    decisions, whose product is the loop extent. ``axes`` (``reuse_axes``, one per
    block) names the spatial loop that gets the block of accumulators; without
    it, or where it is None, the largest spatial loop but the last gets it.
    """
    decisions = {}
    groups: list[list] = []
    for inst in trace.insts:
        if inst.kind.name != "SamplePerfectTile":
            continue
        levels = int(inst.attrs[0])
        if not groups or (levels == 4 and int(groups[-1][-1].attrs[0]) == 2):
            groups.append([])
        groups[-1].append(inst)
    if axes is None or len(axes) != len(groups):
        axes = [None] * len(groups)
    for group, axis in zip(groups, axes):
        spatial = [i for i in group if int(i.attrs[0]) == 4]
        reduction = [i for i in group if int(i.attrs[0]) == 2]
        extents = [math.prod(int(x) for x in trace.decisions[i]) for i in spatial]
        if not spatial:
            continue
        last = len(spatial) - 1
        inner = [k for k in range(last) if extents[k] > 1]
        channels = axis if axis in inner else max(inner, key=lambda k: extents[k]) if inner else None
        for k, inst in enumerate(spatial):
            extent = extents[k]
            if k == last:
                lanes = _factor(extent, isa.lanes)
                decisions[inst] = [extent // lanes, 1, 1, lanes]
            elif k == channels:
                block = _factor(extent, isa.channel_block)
                outer = _factor(extent // block, 2)
                decisions[inst] = [extent // (block * outer), 1, outer, block]
            else:
                decisions[inst] = [extent, 1, 1, 1]
        for inst in reduction:
            extent = math.prod(int(x) for x in trace.decisions[inst])
            inner = _factor(extent, 8) if extent > 8 else extent
            decisions[inst] = [extent // inner, inner]
    for inst in trace.insts:
        if inst.kind.name == "SampleCategorical":
            candidates = [int(c) for c in inst.attrs[0]]
            if 64 in candidates:  # the unroll-depth choice
                decisions[inst] = candidates.index(64)
    return decisions


def task_module(func):
    """A model's PrimFunc as the one-function IRModule MetaSchedule schedules (entry ``main``)."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def as_scheduled(sch, name: str):
    """``sch``'s function, named ``name`` again and marked scheduled, to put back into the model."""
    return sch.mod["main"].with_attr("global_symbol", name).with_attr(IS_SCHEDULED, True)


def design_spaces(mod, target, name: str) -> tuple[list, list]:
    """MetaSchedule's design spaces of a one-function module, and its post-processors for ``target``."""
    from tvm.s_tir import meta_schedule as ms

    ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply", task_name=name,
                         rand_state=0, num_threads=1)
    return list(ctx.generate_design_space()), list(ctx.space_generator.postprocs)


def replay(mod, trace, postprocs):
    """A fresh schedule of ``mod`` with ``trace``'s decisions, post-processed as MetaSchedule does its own
    candidates. Raises ValueError saying why the trace does not apply."""
    from tvm.s_tir import Schedule

    sch = Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()  # marks where postprocessing starts, as MetaSchedule's own candidates do
        rejected = next((p for p in postprocs if not p.apply(sch)), None)
    except Exception as exc:  # a decision the schedule primitives reject
        raise ValueError(f"replay failed: {str(exc).strip().splitlines()[-1][:200]}") from None
    if rejected is not None:
        raise ValueError(f"post-processing rejected it ({rejected.legacy_repr()})"
                         if hasattr(rejected, "legacy_repr") else "post-processing rejected it")
    return sch


def cpu_schedule(mod, target, name: str):
    """The default CPU schedule of a one-function IRModule as a MetaSchedule ``Schedule`` (with its
    trace, so it can be measured and stored like any tuning candidate), or None."""
    spaces, postprocs = design_spaces(mod, target, name)
    if spaces:
        trace = spaces[0].trace
        for inst, decision in heuristic_decisions(trace, vector_isa(target), reuse_axes(mod)).items():
            trace = trace.with_decision(inst, decision, remove_postproc=True)
        try:
            return replay(mod, trace, postprocs)
        except ValueError as exc:
            log.info("%s: heuristic schedule rejected (%s); using the sampled one", name, exc)
    for space in spaces:
        space.enter_postproc()
        if all(p.apply(space) for p in postprocs):
            return space
    return None


def apply(mod, target):
    """``mod`` with a default schedule for every PrimFunc that has none."""
    import tvm

    if target.kind.name != "llvm":
        from tvm.s_tir import dlight as dl

        with target:
            return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                           dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs.get(IS_SCHEDULED):
            continue
        sch = cpu_schedule(task_module(func), target, gv.name_hint)
        if sch is None:
            log.warning("%s: no default schedule applies; compiled unscheduled", gv.name_hint)
            continue
        updates[gv] = as_scheduled(sch, gv.name_hint)
    for gv, func in updates.items():
        mod[gv] = func
    return mod
