"""Reading, specialising and running ONNX graphs (shared by export, cost and the frontend)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from tunekit.errors import OnnxModelError

DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
          onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
          onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.DOUBLE: "float64"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints, or strings for symbolic dims
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def load(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file; raises OnnxModelError with the reason if it is not one."""
    path = Path(path)
    if path.is_dir():
        raise OnnxModelError(f"{path} is a directory, not an ONNX file")
    if not path.is_file():
        raise OnnxModelError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except OSError as exc:
        raise OnnxModelError(f"{path}: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxModelError(f"{path} is not a readable ONNX model: {str(exc).strip().splitlines()[-1]}") from None
    if not model.graph.node:  # an empty file parses as an empty protobuf message
        raise OnnxModelError(f"{path} is not an ONNX model (no graph{', 0 bytes' if not path.stat().st_size else ''})")
    return model


def _info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return TensorInfo(value.name, shape, DTYPES.get(tensor.elem_type, str(tensor.elem_type)))


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [_info(v) for v in model.graph.input if v.name not in inits]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [_info(v) for v in model.graph.output]


def image_input(model: onnx.ModelProto) -> TensorInfo:
    """The one NCHW image input; raises OnnxModelError for graphs tunekit cannot drive."""
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        described = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs) or "none"
        raise OnnxModelError(f"expected one NCHW image input, found: {described}")
    return inputs[0]


def specialise(model: onnx.ModelProto, batch: int, height: int, width: int) -> onnx.ModelProto:
    """A copy of ``model`` whose image input is fixed to (batch, C, height, width), shapes re-inferred.

    Raises
    ------
    OnnxModelError
        The graph has a fixed size that differs from the one asked for, or shape
        inference fails at that size.
    """
    info = image_input(model)
    wanted = {0: batch, 2: height, 3: width}
    for axis, value in wanted.items():
        fixed = info.shape[axis]
        if isinstance(fixed, int) and fixed > 0 and fixed != value:
            name = {0: "batch", 2: "height", 3: "width"}[axis]
            raise OnnxModelError(
                f"{info.name} has a fixed {name} of {fixed}; this model accepts only "
                f"{info.shape[2]}x{info.shape[3]} batch {info.shape[0]} (export it with dynamic H/W to specialise it)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph_input = next(v for v in out.graph.input if v.name == info.name)
    for axis, value in wanted.items():
        graph_input.type.tensor_type.shape.dim[axis].Clear()
        graph_input.type.tensor_type.shape.dim[axis].dim_value = value
    del out.graph.value_info[:]
    for output in out.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        out = shape_inference.infer_shapes(out, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise OnnxModelError(f"shape inference failed at {batch}x{height}x{width}: {exc}") from None
    return fold_shapes(out)


SHAPE_OPS = ("Shape", "Size")


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every subgraph that only computes with shapes into constants, once the input shape is fixed.

    Graphs exported from model libraries compute things like TF-style "same"
    padding from the input's shape (Shape -> Gather -> Div -> ... -> Pad); TVM's
    importer refuses such dynamic pads even though every shape is static after
    specialisation. ONNX Runtime's basic, provider-independent graph
    optimisations (constant folding, redundant-node elimination; ONNX ops only)
    fold them. Graphs without shape operators are returned unchanged.
    """
    if not any(node.op_type in SHAPE_OPS for node in model.graph.node):
        return model
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxModelError("this graph computes with its input's shape; folding it needs ONNX Runtime "
                             "(pip install 'tunekit[ort]')") from None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tunekit-fold-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            folded = onnx.load(options.optimized_model_filepath)
        except Exception as exc:  # ONNX Runtime's Fail / InvalidGraph
            raise OnnxModelError(f"could not fold the graph's shape computations: "
                                 f"{str(exc).strip().splitlines()[-1][:300]}") from None
    return shape_inference.infer_shapes(folded, strict_mode=True, data_prop=True)


def run(model: onnx.ModelProto | str | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a graph on the CPU: ONNX Runtime when installed, else onnx's reference evaluator (slow)."""
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return [np.asarray(o) for o in ReferenceEvaluator(model).run(None, inputs)]
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)
