"""Default schedules for TIR functions that have no tuning record.

Unscheduled TIR is not usable: on CPU it runs ~35x slower than PyTorch (one
thread, no vectors), on GPUs it does not build at all (no thread bindings).

- GPUs: TVM's dlight default rules.
- CPUs: MetaSchedule's own design space (the same rules tuning searches),
  with the random decisions replaced by a fixed register-blocking heuristic
  derived from the target's vector ISA (``VectorISA``), then cache blocking.
  The last spatial loop is the vector (C of NHWC, W of NCHW, N of a matmul);
  ``reuse_axes`` picks the loop that holds a block of accumulators.

  - NHWC (the CPU default, ``frontend.prepare``): the vectors are weights (output
    channels). Two vectors of output channels times as many output pixels as the
    registers hold (2 x 13 on AVX-512's 32, 2 x 5 on AVX2's 16), each image value
    broadcast to both; the rows go inside the outer reduction tile up to a 64 KB
    output tile. ResNet-18 with no records (2 rocketlake cores, build's latency):
    5.6 / 16.6 / 56.5 ms at 112 / 224 / 448, against 9.9 / 27.1 / ~85 ms for NCHW's
    block below; the channels are always whole vectors, where NCHW's rows of 7, 14,
    28 and 56 are not.
  - NCHW: an innermost tile of up to one vector of W (16 fp32 lanes on AVX-512, 8
    on AVX2), a block of output channels filling half the register file. A
    16-lane tile on AVX2 needed 16 accumulators and spilled: untuned resnet18 ran
    2.1x slower on Zen 1 than with 8 lanes.

  Reductions get an inner tile of up to 8, and the unroll is 64. If the
  heuristic's decisions do not verify for a function, the design space's own
  sample is used; if that fails too, the function is left to the compiler as is.
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


@dataclass(frozen=True)
class Blocking:
    """How a reduction block's register block is laid out: ``axis`` is the spatial axis (other than the
    vector axis) that holds a block of accumulators, None to leave it to the extents; ``weight_vectors`` says
    the vector loads are of weights (NHWC: the vector is output channels, the block is output pixels),
    not of the image (NCHW: the vector is the output row, the block is output channels)."""

    axis: int | None
    weight_vectors: bool = False
    batch: tuple[int, ...] = ()  # spatial axes that index every operand (Winograd's (m+2)^2 products)


def reuse_axes(mod) -> dict[str, Blocking]:
    """For each multi-level-tiled reduction block of a one-function module, by name, its ``Blocking``.

    The innermost tile of the last spatial axis (W of NCHW, C of NHWC, N of a matmul) is the vector; the
    operands that axis indexes are loaded as vectors. A block along an axis that does not index them reuses
    each vector load once per accumulator: the output channels of an NCHW convolution (whose extent, 64, is
    smaller than the rows, 112, of ResNet's 224 stem, where the largest extent chose the rows and ran at 14
    GFLOP/s), the output pixels of an NHWC one (W rather than H on a tie: neighbouring pixels read
    neighbouring inputs). None for depthwise convolutions, where every axis indexes the image. The vector
    operands are weights when no other spatial axis indexes them, batch axes aside (those that index every
    operand: the (m+2)^2 products of a Winograd convolution). Blocks with a custom schedule rule (Winograd's
    transforms) are not multi-level tiled and are left out.
    """
    import tvm
    from tvm.s_tir import Schedule

    undefined_vars = tvm.get_global_func("tirx.analysis.UndefinedVars")
    sch = Schedule(mod)
    blockings = {}
    for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
        block = sch.get(block_rv)
        if not any(int(iv.iter_type) == 2 for iv in block.iter_vars) or "schedule_rule" in block.annotations:
            continue
        spatial = [iv for iv in block.iter_vars if int(iv.iter_type) == 0]
        uses = [{str(v) for rg in r.region for v in undefined_vars(rg.min, [])} for r in block.reads]
        vector_loads = [u for u in uses if str(spatial[-1].var) in u]
        free = [k for k, iv in enumerate(spatial[:-1])
                if int(iv.dom.extent) > 1 and not any(str(iv.var) in u for u in vector_loads)]
        axis = max(free, key=lambda k: (int(spatial[k].dom.extent), k)) if free else None
        batch = tuple(k for k, iv in enumerate(spatial[:-1])
                      if int(iv.dom.extent) > 1 and all(str(iv.var) in u for u in uses))
        others = {str(iv.var) for k, iv in enumerate(spatial[:-1]) if int(iv.dom.extent) > 1 and k not in batch}
        blockings[block.name_hint] = Blocking(axis, bool(vector_loads) and not any(u & others for u in vector_loads),
                                              batch)
    return blockings


def _tile_samples(trace) -> dict[str, list]:
    """The trace's SamplePerfectTile instructions grouped by the block whose loop each splits, in order."""
    producer = {}
    for inst in trace.insts:
        for rv in inst.outputs:
            producer[rv] = inst

    def block_of(rv):
        inst = producer.get(rv)
        while inst is not None and inst.kind.name != "GetSBlock":
            inst = producer.get(inst.inputs[0]) if inst.inputs else None
        return str(inst.attrs[0]) if inst is not None else ""

    groups: dict[str, list] = {}
    for inst in trace.insts:
        if inst.kind.name == "SamplePerfectTile":
            groups.setdefault(block_of(inst.inputs[0]), []).append(inst)
    return groups


def heuristic_decisions(trace, isa: VectorISA = VectorISA("avx512", 16, 32),
                        blockings: dict[str, Blocking] | None = None) -> dict:
    """Decisions for a CPU multi-level-tiling trace (SSRSRS) on ``isa``: instruction -> decision.

    Tile samples come per block as the spatial loops (4 levels each) followed by
    the reduction loops (2 levels each); extents are read from the sampled
    decisions, whose product is the loop extent. ``blockings`` (``reuse_axes``, by
    block name) names the spatial loop that gets the block of accumulators; without
    it, or where its axis is None, the largest spatial loop but the last gets it.
    Blocks split by custom rules only (no 4-level tiles: Winograd's transforms) get
    their loops unsplit (sampled splits could fail post-processing as dynamic loops;
    the split hardly matters: 470-600 us for any of them on ResNet's 56x56x64 3x3).

    With weight vectors (NHWC), the register block is two vectors of output channels
    times as many output pixels as the registers left hold (2 x 13 on AVX-512), the
    weights' vectors reused across the pixels and each image value broadcast to both,
    as the libraries' direct-convolution kernels do; and the other spatial loops (the
    rows) go inside the outer reduction tile until the output tile reaches 64 KB, so
    a chunk of weights is reused across the rows while it is in cache (layer4 of
    ResNet at 224, 7x7 pixels of 512 channels, ran 2.5x slower streaming its 9.4 MB of
    weights once per row). Batch axes stay outermost: each of Winograd's products then
    reuses its slab of weights across all the tiles.
    """
    decisions = {}
    for name, group in _tile_samples(trace).items():
        blocking = (blockings or {}).get(name, Blocking(None))
        spatial = [i for i in group if int(i.attrs[0]) == 4]
        reduction = [i for i in group if int(i.attrs[0]) == 2]
        extents = [math.prod(int(x) for x in trace.decisions[i]) for i in spatial]
        if not spatial:  # a custom rule's splits (Winograd's transforms): the loops whole, unsplit
            for inst in group:
                decisions[inst] = [math.prod(int(x) for x in trace.decisions[inst]), 1]
            continue
        last = len(spatial) - 1
        inner = [k for k in range(last) if extents[k] > 1]
        channels = blocking.axis if blocking.axis in inner else max(inner, key=lambda k: extents[k]) if inner else None
        lanes = _factor(extents[last], isa.lanes)
        wide = blocking.weight_vectors and lanes == isa.lanes and extents[last] % (2 * lanes) == 0
        vectors = 2 if wide else 1
        for k, inst in enumerate(spatial):
            extent = extents[k]
            if k == last:
                decisions[inst] = [extent // (lanes * vectors), 1, 1, lanes * vectors]
            elif k == channels:
                block = _factor(extent, (isa.registers - 3 * vectors) // vectors if wide else isa.channel_block)
                outer = _factor(extent // block, 2)
                decisions[inst] = [extent // (block * outer), 1, outer, block]
            else:
                decisions[inst] = [extent, 1, 1, 1]
        if wide:  # cache blocking: rows inside the outer reduction tile, up to a 64 KB output tile
            tile = math.prod(decisions[inst][2] * decisions[inst][3] for inst in spatial)
            for k, inst in enumerate(spatial):
                if k not in (last, channels, *blocking.batch) and extents[k] > 1:
                    rows = _factor(extents[k], max(1, 64 * 1024 // (4 * tile)))
                    decisions[inst] = [extents[k] // rows, 1, rows, 1]
                    tile *= rows
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


def replay(mod, trace, postprocs, edit=None):
    """A fresh schedule of ``mod`` with ``trace``'s decisions (then ``edit(sch)``, if given), post-processed as
    MetaSchedule does its own candidates. Raises ValueError saying why the trace does not apply."""
    from tvm.s_tir import Schedule

    sch = Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True)
        if edit is not None:
            edit(sch)
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
