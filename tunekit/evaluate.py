"""Accuracy against latency for a bundle on a labelled image folder: per resolution, per routing policy,
and the oracle (the smallest resolution at which each image is right: the ceiling any policy can reach).

The folder holds one subfolder per class; classes are numbered in sorted name order, which must be
the order of the model's outputs, unless a labels file (one class name per line, line i naming
output i) gives the order. Images (PNG, JPEG) are read with Pillow as RGB, scaled to [0, 1]
and normalised with ImageNet's mean and standard deviation (the zoo's torchvision convention), at
their own size; the bundle resizes and crops them (``runtime.resize_and_crop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.errors import SpecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)


@dataclass(frozen=True)
class Policy:
    """A routing policy as ``--policy`` gives it: ``nearest``, ``budget:MS``, ``cascade:T`` or ``scale:PATH``
    (an ONNX scale model, see ``tunekit.scale``)."""

    name: str
    value: float | str | None = None

    @classmethod
    def parse(cls, text: str) -> "Policy":
        name, _, arg = text.partition(":")
        try:
            if name == "nearest" and not arg:
                return cls("nearest")
            if name == "budget" and float(arg) > 0:
                return cls("budget", float(arg))
            if name == "cascade" and 0 < float(arg) <= 1:
                return cls("cascade", float(arg))
            if name == "scale" and arg:
                if not Path(arg).is_file():
                    raise SpecError(f"--policy {text!r}: no scale model at {arg}")
                return cls("scale", arg)
        except ValueError:
            pass
        raise SpecError(f"--policy {text!r}: expected nearest, budget:MS (MS > 0), cascade:T (0 < T <= 1) "
                        "or scale:PATH")

    def __str__(self) -> str:
        if self.value is None:
            return self.name
        return f"{self.name}:{self.value}" if isinstance(self.value, str) else f"{self.name}:{self.value:g}"

    def kwargs(self) -> dict:
        return {"policy": self.name, **({"budget_ms": self.value} if self.name == "budget" else {}),
                **({"threshold": self.value} if self.name == "cascade" else {}),
                **({"scale_model": self.value} if self.name == "scale" else {})}


def read_labels(path: str | Path) -> list[str]:
    """Class names from a labels file, one per line in the model's output order (blank lines skipped)."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"--labels {path}: cannot read it ({exc.__class__.__name__})") from None
    if not names:
        raise SpecError(f"--labels {path}: no class names in it (expected one per line)")
    if len(set(names)) != len(names):
        raise SpecError(f"--labels {path}: names a class twice")
    return names


def read_folder(folder: str | Path, labels: str | Path | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names in label order, [(image path, label)]); SpecError for a folder that has none, or
    subfolders the labels file does not name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpecError(f"--data {folder}: not a directory")
    present = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not present:
        raise SpecError(f"--data {folder}: no class subfolders (expected one folder of images per class)")
    classes = read_labels(labels) if labels else present
    unknown = [name for name in present if name not in classes]
    if unknown:
        raise SpecError(f"--data {folder}: subfolder(s) {', '.join(unknown[:5])} not in the labels file {labels}")
    items = [(p, label) for label, name in enumerate(classes) if name in present
             for p in sorted((folder / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise SpecError(f"--data {folder}: no PNG or JPEG images in its class subfolders")
    return classes, items


def load_image(path: Path) -> np.ndarray:
    """A 1x3xHxW float32 array, normalised; SpecError for an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise SpecError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return np.ascontiguousarray((rgb.transpose(2, 0, 1)[None] - MEAN) / STD)


def _summary(correct: list[bool], ms: list[float]) -> dict:
    return {"accuracy": float(np.mean(correct)), "mean_ms": float(np.mean(ms)),
            "p90_ms": float(np.percentile(ms, 90)), "images": len(correct)}


def single_resolutions(bundle) -> list:
    """One single-resolution bundle per artifact of ``bundle`` (same resizing, timed the same way), warmed up."""
    from tunekit.runtime import Bundle

    singles = [Bundle([artifact]) for artifact in bundle.artifacts]
    warm_up(bundle)
    return singles


def warm_up(bundle) -> None:
    """First calls (allocation, page faults) are not timed."""
    for artifact in bundle.artifacts:
        artifact.run(np.zeros(artifact.input["shape"], dtype=np.float32))


def at_each_resolution(singles: list, image: np.ndarray, label: int) -> list[tuple[bool, float]]:
    """(right, ms) of ``image`` at each resolution, smallest first."""
    out = []
    for one in singles:
        logits, route = one.run(image, return_route=True)
        out.append((int(np.argmax(logits)) == label, route["ms"]))
    return out


def smallest_right(right_at: list[tuple[bool, float]]) -> int:
    """The oracle's choice: the index of the smallest resolution that is right (the largest if none is)."""
    return next((i for i, (right, _) in enumerate(right_at) if right), len(right_at) - 1)


def evaluate(directory: str | Path, data: str | Path, policies: list[Policy], model: str | None = None,
             on_image: Callable[[], None] | None = None, folder: tuple | None = None) -> dict:
    """Run every image at every resolution of the bundle and under every policy; the report as a dict with
    ``"resolutions"``, ``"policies"`` and ``"oracle"``. ``on_image`` is called after each image;
    ``folder`` is ``read_folder(data)`` when the caller has read it already."""
    from tunekit.runtime import load_bundle

    classes, items = folder or read_folder(data)
    bundle = load_bundle(directory, model)
    singles = single_resolutions(bundle)
    routed = [load_bundle(directory, model, **p.kwargs()) for p in policies]  # refuses a budget none fits
    for b in routed:
        warm_up(b)
    per_res = {tuple(r): ([], []) for r in bundle.resolutions}
    per_policy = [([], [], {}) for _ in policies]
    oracle_right, oracle_ms = [], []
    for path, label in items:
        image = load_image(path)
        right_at = at_each_resolution(singles, image, label)
        for (h, w), (right, ms) in zip(bundle.resolutions, right_at):
            per_res[(h, w)][0].append(right)
            per_res[(h, w)][1].append(ms)
        oracle_right.append(any(right for right, _ in right_at))
        oracle_ms.append(right_at[smallest_right(right_at)][1])
        for p, b in enumerate(routed):
            out, route = b.run(image, return_route=True)
            correct, ms, counts = per_policy[p]
            correct.append(int(np.argmax(out)) == label)
            ms.append(route["ms"])
            for h, w in route["resolutions"]:
                counts[f"{h}x{w}"] = counts.get(f"{h}x{w}", 0) + 1
        if on_image:
            on_image()
    import psutil
    from tvm.target import codegen

    return {"bundle": str(directory), "model": bundle.model, "data": str(data), "classes": classes,
            "machine": {"mcpu": str(codegen.llvm_get_system_cpu()), "cores": psutil.cpu_count(logical=False)},
            "threads": bundle.artifacts[0].threads,
            "resolutions": [{"resolution": [h, w], **_summary(*per_res[(h, w)])} for h, w in bundle.resolutions],
            "policies": [{"policy": str(p), **_summary(c, m), "runs_at": counts}
                         for p, (c, m, counts) in zip(policies, per_policy)],
            "oracle": {**_summary(oracle_right, oracle_ms),
                       "note": "the smallest resolution at which each image is right (the largest if none is)"}}


def load_report(path: str | Path) -> dict:
    """An ``evaluate --output X.json`` report; ReportError naming what is wrong with one that is not."""
    import json

    from tunekit.errors import ReportError

    try:
        report = json.loads(Path(path).read_text())
        for entry in report["resolutions"] + report["policies"]:
            float(entry["accuracy"]), float(entry["mean_ms"])
        report["model"], report["data"]
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a tunekit evaluate JSON report ({exc.__class__.__name__})") from None
    except (KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a tunekit evaluate JSON report (no {exc})") from None
    return report


def choices(report: dict) -> list[dict]:
    """What a deployment can choose, each with its name, accuracy and mean latency: every fixed resolution
    and every policy (not the oracle, which needs the labels)."""
    return ([{"name": f"{r['resolution'][0]}x{r['resolution'][1]}", "accuracy": r["accuracy"],
              "mean_ms": r["mean_ms"]} for r in report["resolutions"]]
            + [{"name": p["policy"], "accuracy": p["accuracy"], "mean_ms": p["mean_ms"]} for p in report["policies"]])


def rows(report: dict) -> list[list[str]]:
    """Table rows: what, accuracy, mean ms, p90 ms, where the images ran."""
    out = [[f"{r['resolution'][0]}x{r['resolution'][1]}", f"{r['accuracy']:.1%}", f"{r['mean_ms']:.2f}",
            f"{r['p90_ms']:.2f}", "all"] for r in report["resolutions"]]
    out += [[p["policy"], f"{p['accuracy']:.1%}", f"{p['mean_ms']:.2f}", f"{p['p90_ms']:.2f}",
             ", ".join(f"{k}: {v}" for k, v in p["runs_at"].items())] for p in report["policies"]]
    o = report["oracle"]
    return out + [["oracle", f"{o['accuracy']:.1%}", f"{o['mean_ms']:.2f}", f"{o['p90_ms']:.2f}", "-"]]
