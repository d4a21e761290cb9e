"""The one place that names things: keys for (model, resolution, batch) and the files derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    """What a tuned or exported thing is specialised for.

    ``str(Key("resnet50", 224, 224, 1))`` is ``resnet50-224x224-b1``; every
    file name (ONNX export, artifact, benchmark row) is derived from it.
    """

    model: str
    height: int
    width: int
    batch: int = 1
    dtype: str = "float32"

    def __str__(self) -> str:
        suffix = "" if self.dtype == "float32" else f"-{self.dtype}"
        return f"{self.model}-{self.height}x{self.width}-b{self.batch}{suffix}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)

    def filename(self, ext: str) -> str:
        return f"{self}.{ext}"


def model_name_for(path: str | Path) -> str:
    """The key's model name for a user's ONNX file: its stem, lower-cased, without dashes."""
    return Path(path).stem.lower().replace("-", "_").replace(" ", "_")
