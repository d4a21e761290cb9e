"""ONNX to Relax, and the one preparation that tune and build share.

MetaSchedule finds tuned schedules by the structure of each task's TIR. If
build prepared the module even slightly differently from tune, the database
keys would not match and tuned schedules would silently not apply; so both
call ``prepare`` here and nothing else (tests check a build after a tune
reports 0 untuned tasks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx

from tunekit.keys import Key


@functools.lru_cache(maxsize=1)
def zoo_model(model: str, weights: str | None):
    from tunekit.models import create_model

    return create_model(model, weights)


def onnx_graph(key: Key, model: str | None = None, onnx_file: str | None = None,
               weights: str | None = None) -> onnx.ModelProto:
    """The static-shape ONNX graph of a zoo model or a user's ONNX file at ``key``'s shape."""
    from tunekit import onnxutil

    if model:
        from tunekit.export import torch_to_onnx

        return torch_to_onnx(zoo_model(model, weights), key)
    return onnxutil.specialise(onnxutil.load(onnx_file), key.batch, key.height, key.width)


def to_relax(graph: onnx.ModelProto):
    """Import an ONNX graph into Relax with the weights as function parameters.

    Returns ``(mod, params)``: ``mod["main"]`` takes the image then the weights
    (attribute ``num_input`` = 1), ``params`` is the list of weight tensors.
    """
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tunekit.errors import OnnxModelError

    try:
        mod = from_onnx(graph, keep_params_in_input=True)
    except Exception as exc:  # the importer raises many kinds for unsupported graphs
        raise OnnxModelError(f"TVM cannot import this ONNX graph: {str(exc).strip().splitlines()[-1]}") from None
    mod, params = relax.frontend.detach_params(mod)
    return mod, list(params.get("main", []))


def prepare(mod, target, layout: str | None = None, winograd: bool | None = None):
    """The preparation shared by tune and build: convert convolutions to ``layout`` (default
    ``targets.default_layout``: NHWC on CPUs), legalise to TIR (3x3 stride-1 NHWC convolutions as
    Winograd with ``winograd``, default: in NHWC on CPUs; see ``tunekit.winograd``), fuse, mark
    weights layout-free.

    NHWC (weights HWIO) puts the output channels innermost, so CPU schedules vectorise along them
    (always a multiple of 16) instead of along the image width (7, 14, 28, 56 in ResNet: partial
    vectors). The model's input and output keep their layouts; ConvertLayout transposes at the edges.
    On CPUs the weights, and whatever is computed from them alone, are marked layout-free
    (``attach_layout_free_weights``), so every schedule stores them in the order it reads them
    (rewritten once, at build time: ``building.compile_module``).
    """
    import tvm
    from tvm import relax
    from tvm.relax import transform as T

    from tunekit import winograd as wino
    from tunekit.targets import check_conv, default_layout, default_winograd

    layout = layout or default_layout(target.kind.name)
    winograd = default_winograd(target.kind.name, layout) if winograd is None else winograd
    check_conv(layout, winograd)
    passes = [T.DecomposeOpsForInference(), T.CanonicalizeBindings()]
    if layout == "NHWC":
        passes.append(T.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}))
    if winograd:
        passes.append(T.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": wino.legalize}))
    passes.append(relax.pipeline.zero_pipeline())
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    return attach_layout_free_weights(mod) if target.kind.name == "llvm" else mod


def attach_layout_free_weights(mod):
    """Mark, on every PrimFunc ``main`` calls, the arguments computed from weights alone as layout-free
    (attribute ``layout_free_buffers``), so tuned schedules may store them in the order they read them.

    TVM's ``AttachAttrLayoutFreeBuffers`` marks only arguments that are weight parameters or constants
    themselves. In NHWC every convolution's weights first go through a transpose to HWIO (and Winograd's
    through the kernel transform), so it marked none of them, and every NHWC kernel read its weights in
    HWIO order: a vector of 32 output channels every 2 KB at 512 channels, two cache lines per 4 KB page,
    which the hardware prefetchers, stopping at page boundaries, barely help. Those weight-only
    computations run once at build time (lifted, then folded), so what they feed is as free as a constant.
    A function called from several places keeps only the arguments free at every call.
    """
    import tvm
    from tvm import relax

    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
    derived = set(main.params[num_input:])
    call_tir = tvm.ir.Op.get("relax.call_tir")
    free: dict = {}
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            used = relax.analysis.free_vars(value)
            if used and all(v in derived for v in used):
                derived.add(binding.var)
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                args = value.args[1].fields
                mine = {i for i, a in enumerate(args) if a in derived or isinstance(a, tvm.ir.expr.Constant)}
                gv = value.args[0]
                free[gv] = free[gv] & mine if gv in free else mine
    for gv, indices in free.items():
        mod[gv] = mod[gv].with_attr("layout_free_buffers", [int(i) for i in sorted(indices)])
    return mod


@dataclass(frozen=True)
class Task:
    """One tuning task of a prepared module: a fused TIR function on the image's path."""

    name: str
    mod: object  # tvm IRModule with one PrimFunc
    weight: int  # how many times the model calls it


def tasks_of(graph: onnx.ModelProto, target, layout: str | None = None,
             winograd: bool | None = None) -> tuple[list[Task], list[str]]:
    """``runtime_tasks`` of an ONNX graph after the shared preparation (``to_relax`` then ``prepare``)."""
    mod, _ = to_relax(graph)
    return runtime_tasks(prepare(mod, target, layout, winograd), target)


def runtime_tasks(prepared, target) -> tuple[list[Task], list[str]]:
    """The tasks worth tuning, and the names of those that only transform weights.

    Weight-only functions (bias reshapes, weight transposes) are lifted out of the
    entry point by ``LiftTransformParams`` and run once when the artifact is built,
    so their speed does not matter; tuning them only costs builds.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    lifted = relax.transform.LiftTransformParams()(prepared)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    on_path: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            on_path.add(expr.args[0].name_hint)

    relax.analysis.post_order_visit(lifted["main"].body, visit)
    tasks, weight_only = [], []
    for extracted in ms.relax_integration.extract_tasks(prepared, target):
        if extracted.task_name in on_path:
            tasks.append(Task(extracted.task_name, extracted.dispatched[0], int(extracted.weight)))
        else:
            weight_only.append(extracted.task_name)
    return tasks, weight_only
