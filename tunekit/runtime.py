"""Load and run built artifacts: needs TVM's runtime and numpy only (no torch, no compiler).

``tunekit build`` writes one library per resolution and a ``manifest.json``
describing them. Loading reads the manifest first and refuses, with a clear
error, a library whose bytes no longer match their sha256, a library built by
another TVM version or for a device or instruction set this machine lacks, and
inputs of the wrong shape or dtype.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.common import MANIFEST, sha256
from tunekit.errors import ArtifactError

MANIFEST_KIND = "tunekit-artifacts"


def has_cuda() -> bool:
    """Whether a CUDA GPU is usable by TVM here."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no driver, no runtime: just "no"
        return False


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; build artifacts with `tunekit build ... --out {directory}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("kind") != MANIFEST_KIND:
        raise ArtifactError(f"{path}: not a tunekit artifact manifest")
    return manifest


# LLVM's feature list for a CPU mixes instruction sets with scheduling hints (fast-*, false-deps-*,
# slow-*, tuning-*): only the former decide whether code runs. A haswell build runs on a Zen 4.
ISA_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "bmi", "lzcnt", "popcnt", "movbe", "aes", "pclmul", "vpclmulqdq",
                "gfni", "vaes", "sha", "adx", "amx", "cx16", "xop", "crc32", "cmov", "neon", "sve", "dotprod",
                "fullfp16", "i8mm", "bf16")


def _missing_cpu_features(target: dict) -> list[str]:
    """Instruction-set features the artifact's LLVM target uses that this CPU does not have."""
    import tvm
    from tvm.target import codegen

    host_triple = codegen.llvm_get_system_triple()
    triple = target.get("mtriple", host_triple)
    if triple.split("-")[0] != host_triple.split("-")[0]:
        return [f"architecture {triple.split('-')[0]}"]
    if "mcpu" not in target and "mattr" not in target:
        return []
    wanted = {str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(target))
              if str(f).startswith(ISA_PREFIXES)}
    have = {str(f) for f in codegen.llvm_get_cpu_features(
        tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))}
    return sorted(wanted - have)


def check_compatible(entry: dict) -> None:
    """Raise ArtifactError unless this machine and TVM can run the artifact described by ``entry``."""
    import tvm

    name = entry["file"]
    if entry["tvm_version"] != tvm.__version__:
        raise ArtifactError(f"{name} was built with TVM {entry['tvm_version']}, this is TVM {tvm.__version__};"
                            " rebuild it with `tunekit build`")
    target = entry["target"]
    kind = target["kind"]
    if kind == "cuda":
        if not has_cuda():
            raise ArtifactError(f"{name} was built for CUDA ({target.get('arch', '?')}) and this machine has no"
                                " usable GPU; build for a CPU target instead")
        arch = target.get("arch", "")
        have = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
        if arch and arch != have:
            raise ArtifactError(f"{name} was built for {arch}, this GPU is {have}; rebuild with a matching target")
    elif kind == "llvm":
        missing = _missing_cpu_features(target)
        if missing:
            raise ArtifactError(f"{name} was built for {target.get('mcpu', target.get('mtriple'))}; this CPU lacks "
                                f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    else:
        raise ArtifactError(f"{name}: artifacts for target kind {kind!r} cannot be loaded by tunekit")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), 1 at least."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def artifact_threads(entry: dict) -> int:
    """The threads a manifest entry runs on here: its target's ``threads`` (one per physical core, what
    ``targets.default_threads`` gave at build time), capped by this process's usable CPUs."""
    cpus = usable_cpus()
    return max(1, min(int(entry.get("threads") or cpus), cpus))


def start_thread_pool(threads: int) -> int:
    """Start TVM's CPU thread pool for the calling thread with ``threads`` workers; returns the count it has.

    TVM reads ``TVM_NUM_THREADS`` once, when a thread first runs parallel code;
    unset, it takes half the logical CPUs (one of two on a 2-vCPU machine). Its
    pool also pins the calling thread to one core when it uses fewer threads
    than cores, which would squeeze the rest of the host application onto that
    core: the caller's CPU affinity is put back as it was.
    """
    import tvm

    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    os.environ["TVM_NUM_THREADS"] = str(threads)
    have = int(tvm.get_global_func("runtime.NumThreads")())  # creates this thread's pool on first use
    if have != threads:  # the pool existed already: TVM can shrink it, not grow it
        tvm.get_global_func("runtime.config_threadpool")(0, threads)
        have = int(tvm.get_global_func("runtime.NumThreads")())
    if before is not None and os.sched_getaffinity(0) != before:
        os.sched_setaffinity(0, before)
    return have


class Artifact:
    """One built library: ``run(image) -> output`` at a fixed resolution, on ``threads`` CPU threads."""

    def __init__(self, path: Path, entry: dict, threads: int | None = None):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = path
        self.entry = entry
        self.model: str = entry["model"]
        self.resolution: tuple[int, int] = tuple(entry["resolution"])
        self.batch: int = entry["batch"]
        self.target: dict = entry["target"]
        self.input = entry["input"]
        self.output = entry["output"]
        self.device = tvm.cuda(0) if self.target["kind"] == "cuda" else tvm.cpu(0)
        self.threads = None
        if self.target["kind"] == "llvm":
            wanted = threads or artifact_threads(entry)
            self.threads = start_thread_pool(wanted)
            if self.threads != wanted:
                warnings.warn(f"TVM's thread pool was started with {self.threads} threads before tunekit asked for"
                              f" {wanted}; set TVM_NUM_THREADS={wanted} before anything runs TVM code",
                              RuntimeWarning, stacklevel=3)
        self._vm = VirtualMachine(tvm.runtime.load_module(str(path)), self.device)
        self._main = self._vm["main"]

    def __repr__(self) -> str:
        h, w = self.resolution
        return f"Artifact({self.model} {h}x{w} b{self.batch}, {self.target['kind']}, {self.path.name})"

    def check_input(self, image: np.ndarray) -> None:
        if not isinstance(image, np.ndarray):
            raise ArtifactError(f"input must be a numpy array, got {type(image).__name__}")
        want_shape, want_dtype = tuple(self.input["shape"]), self.input["dtype"]
        if image.dtype != np.dtype(want_dtype):
            raise ArtifactError(f"{self.path.name} takes {want_dtype} input, got {image.dtype}")
        if tuple(image.shape) != want_shape:
            raise ArtifactError(f"{self.path.name} takes input of shape {list(want_shape)}, got {list(image.shape)}")

    def run(self, image: np.ndarray) -> np.ndarray:
        """Run on ``image`` (exactly the built shape and dtype); returns the output as numpy."""
        import tvm

        self.check_input(image)
        out = self._main(tvm.runtime.tensor(np.ascontiguousarray(image), self.device))
        return out.numpy()

    def set_instrument(self, instrument: Callable | None) -> None:
        """Call ``instrument(func, symbol, before, ret, *args)`` round every call the Relax VM makes
        (kernels, allocations) in later runs; it returns ``tvm.runtime.vm.VMInstrumentReturnKind``.
        ``None`` removes it. For profiling (benchmarks/profile.py); it slows every call."""
        self._vm.set_instrument(instrument)


def load(path: str | Path, file: str | None = None, threads: int | None = None) -> Artifact:
    """Load one artifact: a library file, or a directory holding exactly one (else name it with ``file``).

    ``threads``: CPU threads to run on; default the target's (one per physical
    core, as recorded in the manifest), capped by the CPUs this process may use.
    TVM takes the count when the calling thread first runs TVM code, so the
    first artifact loaded in a thread decides (a later, larger count warns).
    """
    path = Path(path)
    if path.is_file():
        directory, file = path.parent, path.name
    elif path.is_dir():
        directory = path
    else:
        raise ArtifactError(f"{path}: no such file or directory")
    entries = read_manifest(directory)["artifacts"]
    if file is None:
        if len(entries) != 1:
            names = ", ".join(e["file"] for e in entries)
            raise ArtifactError(f"{directory} holds {len(entries)} artifacts ({names}); name one, or use load_bundle")
        file = entries[0]["file"]
    entry = next((e for e in entries if e["file"] == file), None)
    if entry is None:
        raise ArtifactError(f"{file} is not listed in {directory / MANIFEST}")
    library = directory / file
    if not library.is_file():
        raise ArtifactError(f"{library}: listed in the manifest but missing")
    if sha256(library) != entry["sha256"]:
        raise ArtifactError(f"{library}: sha256 does not match the manifest (corrupted or replaced); rebuild it")
    check_compatible(entry)
    return Artifact(library, entry, threads)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an NCHW batch with bilinear interpolation (half-pixel centres, as torch's align_corners=False)."""
    n, c, h, w = image.shape
    if (h, w) == (height, width):
        return image

    def axis(size_in, size_out):
        pos = (np.arange(size_out, dtype=np.float64) + 0.5) * size_in / size_out - 0.5
        pos = np.clip(pos, 0, size_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, size_in - 1)
        return lo, hi, (pos - lo)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    fy = fy[:, None].astype(image.dtype)
    fx = fx[None, :].astype(image.dtype)
    top = image[:, :, y0][:, :, :, x0] * (1 - fx) + image[:, :, y0][:, :, :, x1] * fx
    bottom = image[:, :, y1][:, :, :, x0] * (1 - fx) + image[:, :, y1][:, :, :, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(image.dtype)


def resize_and_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (NCHW) scaled, keeping its aspect ratio, until it covers ``height`` x ``width`` (bilinear,
    ``resize_bilinear``), then cropped to it around the centre: what torchvision's Resize + CenterCrop do."""
    n, c, h, w = image.shape
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    scaled = resize_bilinear(image, sh, sw)
    top, left = (sh - height) // 2, (sw - width) // 2
    return np.ascontiguousarray(scaled[:, :, top:top + height, left:left + width])


def softmax_top1(logits: np.ndarray) -> float:
    """The smallest top-1 softmax probability over the batch (the cascade's confidence)."""
    z = logits.reshape(logits.shape[0], -1).astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return float((z.max(axis=1) / z.sum(axis=1)).min())


POLICIES = ("nearest", "budget", "cascade", "scale")


class Bundle:
    """All resolutions of one model, and a policy that picks which run for an image.

    Policies (``load_bundle(directory, policy=...)``):

    - ``"nearest"`` (default): the resolution nearest the image's own pixel count.
    - ``"budget"``, with ``budget_ms``: the largest resolution whose latency, measured by
      ``tunekit build`` on the artifact's threads and stored in the manifest (median), fits
      the budget; the same for every image. ``ArtifactError`` when none fits.
    - ``"cascade"``, with ``threshold``: run the smallest resolution; while the top-1 softmax
      probability is below ``threshold`` and a larger resolution exists, run the next one.
      Every step's time counts in the route's ``ms``.
    - ``"scale"``, with ``scale_model`` (an ONNX path or a ``tunekit.ScaleModel``): a small
      classifier scores each resolution (smallest first) from the image at its own low
      resolution; the best-scored one runs. The scale model's time counts in ``ms``.

    Images of any size are fitted to the chosen resolution by ``resize_and_crop``: scaled
    (bilinear, aspect ratio kept) until they cover it, then cropped around the centre.

        bundle = tunekit.load_bundle("artifacts/r18", policy="budget", budget_ms=10)
        logits, route = bundle.run(image, return_route=True)
        route["resolutions"], route["ms"]   # [[168, 168]], 8.9
    """

    def __init__(self, artifacts: list[Artifact], policy: str = "nearest", budget_ms: float | None = None,
                 threshold: float | None = None, scale_model=None):
        self.artifacts = sorted(artifacts, key=lambda a: a.resolution[0] * a.resolution[1])
        self.model = artifacts[0].model
        self.resolutions = [a.resolution for a in self.artifacts]
        self.channels = int(self.artifacts[0].input["shape"][1])
        self.policy = policy
        self.threshold = threshold
        if policy not in POLICIES:
            raise ArtifactError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if (budget_ms is not None) != (policy == "budget"):
            raise ArtifactError("budget_ms= goes with policy='budget', and policy='budget' needs it")
        if (threshold is not None) != (policy == "cascade"):
            raise ArtifactError("threshold= goes with policy='cascade', and policy='cascade' needs it")
        if policy == "cascade" and not 0 < threshold <= 1:
            raise ArtifactError(f"threshold must be a probability in (0, 1], got {threshold}")
        if (scale_model is not None) != (policy == "scale"):
            raise ArtifactError("scale_model= goes with policy='scale', and policy='scale' needs it")
        if policy == "scale":
            if isinstance(scale_model, (str, Path)):
                from tunekit.scale import ScaleModel

                scale_model = ScaleModel(scale_model)
            if scale_model.outputs != len(self.artifacts):
                raise ArtifactError(f"the scale model gives {scale_model.outputs} scores; the bundle has "
                                    f"{len(self.artifacts)} resolutions")
            if scale_model.resolutions not in (None, [list(r) for r in self.resolutions]):
                sides = ", ".join(f"{h}x{w}" for h, w in scale_model.resolutions)
                raise ArtifactError(f"the scale model was trained for a bundle at {sides}; this one is at "
                                    f"{', '.join(f'{h}x{w}' for h, w in self.resolutions)}")
        self.scale_model = scale_model
        self.fixed = self._within_budget(budget_ms) if policy == "budget" else None

    def _within_budget(self, budget_ms: float) -> Artifact:
        missing = [a.path.name for a in self.artifacts if not (a.entry.get("latency") or {}).get("median_ms")]
        if missing:
            raise ArtifactError(f"no measured latency in the manifest for {', '.join(missing)}; rebuild with "
                                "this tunekit (tunekit build measures it)")
        fits = [a for a in self.artifacts if a.entry["latency"]["median_ms"] <= budget_ms]
        if not fits:
            fastest = min(self.artifacts, key=lambda a: a.entry["latency"]["median_ms"])
            h, w = fastest.resolution
            raise ArtifactError(f"no resolution fits {budget_ms:g} ms: the fastest, {h}x{w}, takes "
                                f"{fastest.entry['latency']['median_ms']:.2f} ms")
        return max(fits, key=lambda a: a.resolution[0] * a.resolution[1])

    def __repr__(self) -> str:
        sides = ", ".join(f"{h}x{w}" for h, w in self.resolutions)
        return f"Bundle({self.model}: {sides}; policy {self.policy})"

    def route(self, height: int, width: int, image: np.ndarray | None = None) -> Artifact:
        """The first artifact the policy runs for an image of ``height`` x ``width`` (the scale policy
        needs the ``image`` itself)."""
        import math

        if self.fixed is not None:
            return self.fixed
        if self.policy == "cascade":
            return self.artifacts[0]
        if self.policy == "scale" and image is not None:
            return self.artifacts[self.scale_model.pick(image)]
        return min(reversed(self.artifacts),
                   key=lambda a: abs(math.log(height * width / (a.resolution[0] * a.resolution[1]))))

    def run(self, image: np.ndarray, return_route: bool = False):
        """The backbone's output for ``image`` (NCHW float32, any H x W); with ``return_route``,
        ``(output, {"resolutions": [[h, w], ...] that ran, in order, "ms": wall time of the call})``."""
        import time

        t0 = time.perf_counter()
        if not isinstance(image, np.ndarray) or image.ndim != 4:
            raise ArtifactError("bundle input must be a 4-D NCHW numpy array")
        if image.shape[1] != self.channels:
            raise ArtifactError(f"{self.model} takes {self.channels}-channel images, got {image.shape[1]} channels")
        artifact = self.route(image.shape[2], image.shape[3], image)
        ran = []
        while True:
            h, w = artifact.resolution
            out = artifact.run(resize_and_crop(image, h, w))
            ran.append([h, w])
            if self.policy != "cascade" or softmax_top1(out) >= self.threshold or artifact is self.artifacts[-1]:
                break
            artifact = self.artifacts[self.artifacts.index(artifact) + 1]
        if not return_route:
            return out
        return out, {"resolutions": ran, "ms": (time.perf_counter() - t0) * 1e3}


def load_bundle(directory: str | Path, model: str | None = None, threads: int | None = None,
                policy: str = "nearest", budget_ms: float | None = None, threshold: float | None = None,
                scale_model=None) -> Bundle:
    """Load every artifact of ``model`` (required when the directory holds several models) in ``directory``,
    each on ``threads`` CPU threads (default: as ``load``), routed by ``policy`` (see ``Bundle``)."""
    entries = read_manifest(directory)["artifacts"]
    models = sorted({e["model"] for e in entries})
    if model is None:
        if len(models) != 1:
            raise ArtifactError(f"{directory} holds artifacts of {', '.join(models)}; pass model=")
        model = models[0]
    chosen = [e for e in entries if e["model"] == model]
    if not chosen:
        raise ArtifactError(f"{directory} has no artifacts of {model!r} (it has {', '.join(models)})")
    return Bundle([load(directory, e["file"], threads) for e in chosen], policy, budget_ms, threshold, scale_model)
