"""Compute and memory cost of a model per resolution, counted from its ONNX graph.

MACs are multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (what the
papers call "GFLOPs" in their tables); FLOPs are 2 x MACs. Peak activation
memory follows Morlier et al.: the largest, over all operators, of the bytes of
the operator's non-weight inputs plus its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import shape_inference

BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
         onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
         onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1}


@dataclass(frozen=True)
class Cost:
    """Cost of one model at one resolution."""

    resolution: int
    macs: int
    params: int
    peak_activation_bytes: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9

    def to_json(self) -> dict:
        return {**asdict(self), "gmacs": round(self.gmacs, 4), "gflops": round(self.gflops, 4),
                "params_m": round(self.params / 1e6, 3),
                "peak_activation_mb": round(self.peak_activation_bytes / 2**20, 3)}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[value.name] = (tuple(d.dim_value for d in t.shape.dim), t.elem_type)
    for init in model.graph.initializer:
        shapes[init.name] = (tuple(init.dims), init.data_type)
    return shapes


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[tuple[int, ...], int]]) -> int:
    """Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul node (0 for any other op), with
    ``shapes`` from ``_shapes`` of its graph (a tensor of unknown shape counts 0)."""

    def numel(name: str) -> int:
        return int(np.prod(shapes[name][0])) if name in shapes else 0

    if node.op_type == "Conv":
        return numel(node.output[0]) * int(np.prod(shapes[node.input[1]][0][1:]))
    if node.op_type == "ConvTranspose":
        return numel(node.input[0]) * int(np.prod(shapes[node.input[1]][0][1:]))
    if node.op_type == "Gemm":
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return numel(node.output[0]) * shapes[node.input[0]][0][0 if trans_a else 1]
    if node.op_type == "MatMul":
        return numel(node.output[0]) * shapes[node.input[0]][0][-1]
    return 0


def graph_cost(model: onnx.ModelProto, resolution: int, params: int | None = None) -> Cost:
    """Count MACs, parameters and peak activation bytes of a static-shape graph.

    ``params`` overrides the parameter count (a PyTorch model's own count
    includes the batch-norm weights that export folds into the convolutions).
    """
    shapes = _shapes(model)
    weights = {i.name for i in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}

    def numel(name: str) -> int:
        return int(np.prod(shapes[name][0])) if name in shapes else 0

    def nbytes(name: str) -> int:
        return numel(name) * BYTES.get(shapes[name][1], 4) if name in shapes else 0

    macs = 0
    peak = 0
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        macs += node_macs(node, shapes)
        live = sum(nbytes(i) for i in node.input if i and i not in weights)
        live += sum(nbytes(o) for o in node.output if o)
        peak = max(peak, live)
    if params is None:
        params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    return Cost(resolution, macs, params, peak)


def zoo_costs(name: str, sides: list[int], batch: int = 1, weights=None) -> list[Cost]:
    """Cost of zoo model ``name`` at each side (graph traced per side; parameters as PyTorch counts them)."""
    from tunekit.export import torch_to_onnx
    from tunekit.keys import Key
    from tunekit.models import count_parameters, create_model

    model = create_model(name, weights)
    params = count_parameters(model)
    return [graph_cost(torch_to_onnx(model, Key(name, s, s, batch)), s, params) for s in sides]


def onnx_costs(path, sides: list[int], batch: int = 1) -> list[Cost]:
    """Cost of a user's ONNX model specialised to each side."""
    from tunekit import onnxutil

    original = onnxutil.load(path)
    return [graph_cost(onnxutil.specialise(original, batch, s, s), s) for s in sides]
