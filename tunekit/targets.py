"""Targets as data: one JSON file per preset under targets/, plus detection of this host."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tunekit.errors import SpecError

TARGETS_DIR = Path(os.environ.get("TUNEKIT_TARGETS", Path(__file__).resolve().parent.parent / "targets"))


@dataclass(frozen=True)
class TargetSpec:
    """A tuning target: the TVM target dict and what we know of the machine.

    ``threads`` is how many threads tuned and library code run with (half the
    hardware threads on SMT CPUs, as in the paper); ``peak_gflops`` is fp32 peak,
    None when unknown.
    """

    name: str
    tvm: dict
    description: str = ""
    cores: int = 0
    threads: int = 0
    peak_gflops: float | None = None
    notes: str = ""

    def __post_init__(self):
        if not isinstance(self.tvm, dict) or "kind" not in self.tvm:
            raise SpecError(f"target {self.name!r}: 'tvm' must be a TVM target dict with a 'kind'")

    @property
    def kind(self) -> str:
        return self.tvm["kind"]

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("cuda", "rocm", "vulkan", "metal", "opencl")

    def tvm_target(self):
        """The ``tvm.target.Target`` (TVM 0.27 takes dicts, not strings)."""
        import tvm

        try:
            return tvm.target.Target(self.tvm)
        except Exception as exc:  # TVM raises ValueError / TVMError for bad dicts
            raise SpecError(f"target {self.name!r}: TVM rejects {self.tvm}: {exc}") from None

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
    data = json.loads(path.read_text())
    known = {k: data[k] for k in ("name", "tvm", "description", "cores", "threads", "peak_gflops", "notes")
             if k in data}
    return TargetSpec(**known)


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TARGETS_DIR.glob("*.json"))}


def resolve_target(name: str) -> TargetSpec:
    """A preset name (``host``, ``i7-4790k``, ...), a JSON file, or a raw TVM target dict as JSON.

    Raises
    ------
    SpecError
        Unknown name (listing the valid ones) or a dict TVM rejects.
    """
    text = name.strip()
    if text.startswith("{"):
        try:
            tvm_dict = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"target is not valid JSON: {exc}") from None
        spec = TargetSpec(name=tvm_dict.get("kind", "custom"), tvm=tvm_dict,
                          cores=int(tvm_dict.get("num-cores", 0)), threads=int(tvm_dict.get("num-cores", 0)))
        spec.tvm_target()  # validate now: a bad dict is the user's mistake
        return spec
    if text == "host":
        return detect_host()
    if text.endswith(".json") and Path(text).is_file():
        return _from_file(Path(text))
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
