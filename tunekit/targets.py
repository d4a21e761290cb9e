"""Targets as data: one JSON file per preset under targets/, plus detection of this host."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tunekit.errors import SpecError

LAYOUTS = ("NHWC", "NCHW")  # the convolution layouts frontend.prepare converts to


def default_layout(kind: str) -> str:
    """NHWC on CPUs (vectors along the output channels; measured in fallback.heuristic_decisions), NCHW
    elsewhere (dlight's GPU rules)."""
    return "NHWC" if kind == "llvm" else "NCHW"


def default_winograd(kind: str, layout: str) -> bool:
    """Winograd for 3x3 stride-1 convolutions (``tunekit.winograd``) where it is implemented: NHWC on CPUs."""
    return kind == "llvm" and layout == "NHWC"


def check_conv(layout: str, winograd: bool) -> None:
    """Raise SpecError for a convolution layout frontend.prepare does not know, or Winograd outside NHWC."""
    if layout not in LAYOUTS:
        raise SpecError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if winograd and layout != "NHWC":
        raise SpecError(f"winograd needs the NHWC layout, not {layout}")


def bundled_dir() -> Path:
    """The preset files shipped with tunekit: targets/ of the source tree, ``tunekit.presets`` when installed."""
    installed = Path(__file__).resolve().parent / "presets"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "targets"


def user_dir() -> Path | None:
    """``$TUNEKIT_TARGETS``: a directory of the user's own preset files (they win over bundled ones of the same
    name)."""
    value = os.environ.get("TUNEKIT_TARGETS")
    return Path(value) if value else None


@dataclass(frozen=True)
class TargetSpec:
    """A tuning target: the TVM target dict and what we know of the machine.

    ``threads`` is how many threads tuned and library code run with (half the
    hardware threads on SMT CPUs, as in the paper); ``peak_gflops`` is fp32 peak,
    None when unknown; ``layout`` the convolution layout tune and build prepare
    the model in ("" for ``default_layout``); ``winograd`` whether its 3x3 stride-1
    convolutions run as Winograd (None for ``default_winograd``); ``prefetch`` whether
    built CPU kernels prefetch their weights (None: yes on CPUs).
    """

    name: str
    tvm: dict
    description: str = ""
    cores: int = 0
    threads: int = 0
    peak_gflops: float | None = None
    notes: str = ""
    layout: str = ""
    winograd: bool | None = None
    prefetch: bool | None = None

    def __post_init__(self):
        if not isinstance(self.tvm, dict) or "kind" not in self.tvm:
            raise SpecError(f"target {self.name!r}: 'tvm' must be a TVM target dict with a 'kind'")
        if self.winograd not in (None, True, False):
            raise SpecError(f"target {self.name!r}: winograd must be true or false, not {self.winograd!r}")
        if self.prefetch not in (None, True, False):
            raise SpecError(f"target {self.name!r}: prefetch must be true or false, not {self.prefetch!r}")
        try:
            check_conv(self.conv_layout, self.conv_winograd)
        except SpecError as exc:
            raise SpecError(f"target {self.name!r}: {exc}") from None

    @property
    def conv_layout(self) -> str:
        return self.layout or default_layout(self.kind)

    @property
    def conv_winograd(self) -> bool:
        return default_winograd(self.kind, self.conv_layout) if self.winograd is None else self.winograd

    @property
    def weight_prefetch(self) -> bool:
        """Whether built CPU kernels prefetch their weight streams (``tunekit.prefetch``); on by default on CPUs."""
        return self.kind == "llvm" if self.prefetch is None else self.prefetch

    @property
    def kind(self) -> str:
        return self.tvm["kind"]

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("cuda", "rocm", "vulkan", "metal", "opencl")

    def tvm_target(self):
        """The ``tvm.target.Target`` (TVM 0.27 takes dicts, not strings).

        Raises SpecError for a dict TVM rejects, and for an ``mcpu`` LLVM does not
        know (LLVM itself would only warn and emit generic code).
        """
        import tvm

        try:
            target = tvm.target.Target(self.tvm)
        except Exception as exc:  # TVM raises ValueError / TVMError for bad dicts
            raise SpecError(f"target {self.name!r}: TVM rejects {self.tvm}: {str(exc).strip().splitlines()[-1]}") \
                from None
        mcpu = self.tvm.get("mcpu")
        if self.kind == "llvm" and mcpu:
            from tvm.target import codegen

            triple = self.tvm.get("mtriple") or codegen.llvm_get_system_triple()
            if not codegen.llvm_is_valid_cpu(mcpu, triple):
                raise SpecError(f"target {self.name!r}: LLVM knows no CPU {mcpu!r} for {triple} "
                                "(examples: haswell, skylake-avx512, znver1, znver4)")
        return target

    def to_json(self) -> dict:
        return asdict(self)


def _flops_per_cycle(flags: set[str], mcpu: str) -> int:
    """fp32 FLOP/cycle/core from the ISA (FMA = 2 FLOP): a rough, stated estimate."""
    if "avx512f" in flags:
        return 32 if mcpu.startswith("znver") else 64  # Zen 4 runs AVX-512 on 256-bit units
    if "avx2" in flags and "fma" in flags:
        return 16 if mcpu == "znver1" else 32  # Zen 1 / Zen+ split 256-bit FMAs over 128-bit units
    return 8


def cpu_info() -> dict:
    """Model name, ISA flags and clock of this CPU, from /proc/cpuinfo (empty values elsewhere)."""
    info = {"model": "", "flags": [], "mhz": 0.0}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not info["model"]:
            info["model"] = value
        elif key == "flags" and not info["flags"]:
            info["flags"] = value.split()
        elif key == "cpu MHz" and not info["mhz"]:
            info["mhz"] = float(value)
    return info


def detect_host() -> TargetSpec:
    """This machine: LLVM's name for its CPU, physical cores, and an estimated fp32 peak."""
    import psutil
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    logical = psutil.cpu_count(logical=True) or cores
    threads = cores  # half the hardware threads on SMT CPUs is one per physical core
    info = cpu_info()
    flags = set(info["flags"])
    # Peak needs the top (boost) clock: /proc/cpuinfo's MHz is the current one, and boost
    # clocks beat it by 40% on this EPYC, so a peak from it is exceeded in practice. Unknown
    # (None) when the OS does not report a maximum, as in most VMs.
    freq = psutil.cpu_freq()
    top_mhz = (freq.max if freq else 0.0) or 0.0
    peak = round(cores * top_mhz / 1e3 * _flops_per_cycle(flags, mcpu), 1) if top_mhz else None
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return TargetSpec(
        name="host",
        tvm={"kind": "llvm", "mcpu": mcpu, "num-cores": cores},
        description=f"{info['model'] or 'this CPU'} ({mcpu}), {cores} cores / {logical} threads",
        cores=cores, threads=threads, peak_gflops=peak,
        notes=f"detected; ISA {' '.join(isa) or 'baseline'}; "
              + (f"peak from the {top_mhz:.0f} MHz top clock" if peak else "peak unknown (no top clock reported)"),
    )


def _from_file(path: Path) -> TargetSpec:
    """A preset file: ``{"name": ..., "tvm": {TVM target dict}, ...}`` (see targets/*.json)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"target file {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"target file {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tvm"), dict):
        raise SpecError(f"target file {path}: needs a \"tvm\" key holding a TVM target dict, e.g. "
                        '{"name": "mybox", "tvm": {"kind": "llvm", "mcpu": "znver4", "num-cores": 8}, "threads": 8}')
    keys = ("name", "tvm", "description", "cores", "threads", "peak_gflops", "notes", "layout", "winograd", "prefetch")
    known = {k: data[k] for k in keys if k in data}
    known.setdefault("name", path.stem)
    for field in ("cores", "threads"):
        if not isinstance(known.get(field, 0), int) or known.get(field, 0) < 0:
            raise SpecError(f"target file {path}: {field!r} must be a whole number >= 0")
    return TargetSpec(**known)


def presets() -> dict[str, Path]:
    """Preset name -> file: the bundled presets, then ``$TUNEKIT_TARGETS``'s (same name: the user's wins)."""
    found = {p.stem: p for p in sorted(bundled_dir().glob("*.json"))}
    extra = user_dir()
    if extra is not None and extra.is_dir():
        found.update({p.stem: p for p in sorted(extra.glob("*.json"))})
    return found


def resolve_target(name: str) -> TargetSpec:
    """A preset name (``host``, ``i7-4790k``, ...), a JSON file, or a raw TVM target dict as JSON.

    Raises
    ------
    SpecError
        Unknown name (listing the valid ones) or a dict TVM rejects.
    """
    text = name.strip()
    if text.startswith(("{", "[")):
        try:
            tvm_dict = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"target is not valid JSON: {exc}") from None
        if not isinstance(tvm_dict, dict):
            raise SpecError("target JSON must be a TVM target dict, e.g. {\"kind\": \"llvm\", \"mcpu\": \"znver4\"}")
        try:
            cores = int(tvm_dict.get("num-cores", 0))
        except (TypeError, ValueError):
            raise SpecError(f"target: num-cores must be a whole number, got {tvm_dict['num-cores']!r}") from None
        spec = TargetSpec(name=tvm_dict.get("kind", "custom"), tvm=tvm_dict, cores=cores, threads=cores)
        spec.tvm_target()  # validate now: a bad dict is the user's mistake
        return spec
    if text == "host":
        return detect_host()
    if text.endswith(".json") or "/" in text:
        path = Path(text)
        if path.is_dir():
            raise SpecError(f"target file {text}: is a directory")
        if not path.exists():
            raise SpecError(f"target file {text} does not exist (presets: {', '.join(presets())}, host)")
        return _from_file(path)
    found = presets()
    if text not in found:
        raise SpecError(f"unknown target {name!r}; choose from: {', '.join(found)} "
                        "(or a TVM target dict as JSON)")
    return _from_file(found[text])


def default_threads(spec: TargetSpec) -> int:
    """The threads tuned and library code run with on this machine: the target's setting (one per physical
    core on SMT CPUs), capped by this machine's physical cores."""
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return max(1, min(spec.threads or cores, cores))
