"""The scale model of dynamic resolution: a small classifier that looks at an image at its own low
resolution and scores each resolution of a bundle; the bundle runs the best-scored one.

It is a user's ONNX file with one static NCHW input and one output of one score per bundle
resolution (smallest first), compiled here with TVM for the host like any model (with the tuning
database's schedules when ``db`` has them, default schedules otherwise), so its time is small and
is counted in every call's route. ``tunekit scale-model train`` (``tunekit.scale_training``) makes
one for a bundle and records the bundle's resolutions in its metadata, so it is refused for another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tunekit.errors import ArtifactError

RESOLUTIONS_KEY = "tunekit.resolutions"  # ONNX metadata: the bundle's resolutions, [[h, w], ...], smallest first


class ScaleModel:
    """``ScaleModel(path)``: ``scores(image)`` -> one score per resolution; ``pick(image)`` -> the index."""

    def __init__(self, path: str | Path, db: str | Path | None = None, target: str = "host"):
        import tvm
        from tvm import relax

        from tunekit import database, onnxutil
        from tunekit.building import compile_module
        from tunekit.common import native_stderr_to
        from tunekit.targets import resolve_target

        self.path = Path(path)
        graph = onnxutil.load(self.path)
        image = onnxutil.image_input(graph)
        if not all(isinstance(d, int) for d in image.shape):
            raise ArtifactError(f"scale model {self.path}: its input must have a static shape, got {list(image.shape)}")
        outputs = onnxutil.graph_outputs(graph)
        if len(outputs) != 1:
            raise ArtifactError(f"scale model {self.path}: expected one output (a score per resolution), "
                                f"got {len(outputs)}")
        self.input_shape = tuple(image.shape)
        # the bundle resolutions it was trained for (None for a scale model tunekit did not train)
        self.resolutions = next((json.loads(e.value) for e in graph.metadata_props if e.key == RESOLUTIONS_KEY), None)
        self.outputs = int(np.prod([d for d in outputs[0].shape if isinstance(d, int)]))
        spec = resolve_target(target)
        db_path = database.resolve_path(db)
        opened = database.open_database(db_path, spec.tvm_target()) if db_path.is_file() else None
        with native_stderr_to(Path("/dev/null")):
            executable, *_ = compile_module(graph, spec, opened)
        self._vm = relax.VirtualMachine(executable, tvm.cpu())
        self._main = self._vm["main"]

    def scores(self, image: np.ndarray) -> np.ndarray:
        import tvm

        from tunekit.runtime import resize_and_crop

        _, _, h, w = self.input_shape
        x = np.ascontiguousarray(resize_and_crop(image, h, w), dtype=np.float32)
        return self._main(tvm.runtime.tensor(x, tvm.cpu())).numpy().reshape(-1)

    def pick(self, image: np.ndarray) -> int:
        return int(np.argmax(self.scores(image)))
