"""The CI regression gate: is a new `tunekit bench` report slower than a baseline report?

Three questions, in order:

1. **Are the reports usable?** Each is validated against ``SCHEMA`` (jsonschema);
   a malformed one is a ``ReportError`` naming the first bad field.
2. **Do they measure the same thing?** Model, batch, threads and the CPU's ISA
   must agree (``identity_mismatch``), or the comparison is refused; differing
   library versions or LLVM CPU names are warned about (``identity_warnings``).
3. **Is the difference beyond the noise?** The unit of independent measurement
   is the worker process (benching's docstring: a process's speed is decided when it
   starts, e.g. TVM's runs are bimodal across processes), so the confidence
   interval comes from a hierarchical bootstrap: resample the processes, then the
   samples within each, and take the ratio of medians. scipy's ``bootstrap``
   treats samples as independent, which would understate the spread between
   processes. A change counts as a regression when its point estimate exceeds
   the threshold *and* the whole 95% interval lies above zero.

``--relative-to`` compares the ratio backend/baseline measured in the same run,
so a machine of the same class but a different speed (another VM, another day)
gates on speed relative to the library measured beside it. The two backends of
one process round are resampled together, keeping what they share.

Calibration on this project's hosts is in benchmarks/ci/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunekit.errors import ReportError

SCHEMA_VERSION = 1
CONFIDENCE = 0.95
BOOTSTRAP = 2000

_BACKEND = {
    "type": "object",
    "required": ["median_ms", "p10_ms", "p90_ms", "raw_ms", "raw_process"],
    "properties": {
        "median_ms": {"type": "number", "exclusiveMinimum": 0},
        "p10_ms": {"type": "number", "exclusiveMinimum": 0},
        "p90_ms": {"type": "number", "exclusiveMinimum": 0},
        "raw_ms": {"type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
        "raw_process": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tunekit bench report",
    "type": "object",
    "required": ["schema_version", "model", "batch", "resolutions", "threads", "target", "machine", "versions",
                 "date", "rows"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "model": {"type": "string", "minLength": 1},
        "onnx_sha256": {"type": ["string", "null"]},
        "batch": {"type": "integer", "minimum": 1},
        "resolutions": {"type": "array", "items": {"type": "integer"}},
        "threads": {"type": "integer", "minimum": 1},
        "target": {"type": "object"},
        "machine": {"type": "object", "required": ["cpu", "mcpu", "isa"],
                    "properties": {"isa": {"type": "array", "items": {"type": "string"}}}},
        "versions": {"type": "object"},
        "git_commit": {"type": ["string", "null"]},
        "date": {"type": "string"},
        "rows": {"type": "array", "items": {
            "type": "object", "required": ["resolution"],
            "properties": {"resolution": {"type": "integer"},
                           **{b: _BACKEND for b in ("tuned", "onednn", "untuned", "onnxruntime", "openvino")}}}},
    },
}


def validate(report, name: str) -> dict:
    """``report`` if it matches ``SCHEMA``; else ReportError naming ``name`` and the first bad field."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMA).iter_errors(report))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        hint = "" if report.get("schema_version") == SCHEMA_VERSION or not isinstance(report, dict) else \
            f" (schema_version {report.get('schema_version')!r}, expected {SCHEMA_VERSION}: re-run tunekit bench)"
        raise ReportError(f"{name}: not a usable bench report: {where}: {error.message}{hint}")
    return report


def load(path) -> dict:
    """The bench report in the JSON file at ``path``, validated; ReportError (one line) if it is not one."""
    import json
    from pathlib import Path

    try:
        report = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ReportError(f"{path}: not a `tunekit bench --output FILE.json` report (not JSON)") from None
    return validate(report, path)


def identity_mismatch(base: dict, new: dict) -> str | None:
    """The first field that makes two reports incomparable, as a sentence; None if they are comparable."""
    for field, get in (("model", lambda r: r["model"]), ("onnx_sha256", lambda r: r.get("onnx_sha256")),
                       ("batch", lambda r: r["batch"]), ("threads", lambda r: r["threads"]),
                       ("ISA", lambda r: sorted(r["machine"]["isa"]))):
        if get(base) != get(new):
            return f"the reports differ in {field} ({get(base)} vs {get(new)}): they measure different things"
    return None


def identity_warnings(base: dict, new: dict) -> list[str]:
    """Differences that may explain a change without making the comparison meaningless."""
    out = []
    if base["machine"]["mcpu"] != new["machine"]["mcpu"]:
        out.append(f"CPU differs: {base['machine']['mcpu']} ({base['machine']['cpu']}) vs "
                   f"{new['machine']['mcpu']} ({new['machine']['cpu']}); prefer --relative-to")
    for package in sorted(set(base["versions"]) | set(new["versions"])):
        old, cur = base["versions"].get(package), new["versions"].get(package)
        if old != cur:
            out.append(f"{package} version differs: {old} vs {cur}")
    return out


def parse_threshold(text: str) -> float:
    """``5%`` or ``0.05`` as a fraction; a bare ``5`` is ambiguous and refused (ValueError says why)."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected a percentage like 5% or a fraction like 0.05") from None
    if value < 0:
        raise ValueError("must not be negative")
    if not text.endswith("%") and value >= 1:
        raise ValueError(f"{text}: ambiguous; write {text}% for {text} percent or {value / 100:g} as a fraction")
    return value


def _processes(stats: dict) -> list[np.ndarray]:
    raw, proc = np.asarray(stats["raw_ms"], dtype=float), np.asarray(stats["raw_process"])
    return [raw[proc == p] for p in np.unique(proc)]


def _resampled_medians(groups: list[list[np.ndarray]], rng, n: int) -> np.ndarray:
    """Bootstrap medians, shape (len(groups), n): processes drawn with replacement (the same draw for every
    group, which must come from the same process rounds), then samples within each process."""
    count = min(len(g) for g in groups)
    picks = rng.integers(0, count, size=(n, count))
    out = np.empty((len(groups), n))
    for gi, group in enumerate(groups):
        sizes = {len(p) for p in group[:count]}
        if len(sizes) == 1:  # the usual case, every process the same number of samples: vectorised
            (m,) = sizes
            data = np.stack(group[:count])  # (processes, samples)
            inner = rng.integers(0, m, size=(n, count, m))
            out[gi] = np.median(data[picks[:, :, None], inner].reshape(n, -1), axis=1)
            continue
        for i in range(n):
            pooled = [proc[rng.integers(0, len(proc), len(proc))] for proc in (group[k] for k in picks[i])]
            out[gi, i] = np.median(np.concatenate(pooled))
    return out


@dataclass(frozen=True)
class Change:
    """One (resolution, backend) comparison: times (or ratios) and the change with its confidence interval."""

    resolution: int
    backend: str
    base: float  # ms, or the ratio backend/baseline with --relative-to
    new: float
    change: float  # new / base - 1
    low: float  # the confidence interval of ``change``
    high: float
    verdict: str  # "REGRESSION", "slower, not significant", "faster", "ok"

    @property
    def regressed(self) -> bool:
        return self.verdict == "REGRESSION"


def change_of(base: dict, new: dict, relative_to: str | None, seed: int = 0, n: int = BOOTSTRAP,
              backend: str = "tuned") -> tuple[float, float, float, float, float]:
    """(base value, new value, change, low, high) for ``backend`` in one row of each report."""
    rng = np.random.default_rng(seed)
    if relative_to:
        b = _resampled_medians([_processes(base[backend]), _processes(base[relative_to])], rng, n)
        c = _resampled_medians([_processes(new[backend]), _processes(new[relative_to])], rng, n)
        boot = (c[0] / c[1]) / (b[0] / b[1]) - 1
        old = base[backend]["median_ms"] / base[relative_to]["median_ms"]
        cur = new[backend]["median_ms"] / new[relative_to]["median_ms"]
    else:
        b = _resampled_medians([_processes(base[backend])], rng, n)[0]
        c = _resampled_medians([_processes(new[backend])], rng, n)[0]
        boot = c / b - 1
        old, cur = base[backend]["median_ms"], new[backend]["median_ms"]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return old, cur, cur / old - 1, float(low), float(high)


def compare(base: dict, new: dict, threshold: float, backends: list[str], relative_to: str | None = None,
            seed: int = 0) -> list[Change]:
    """Every (resolution, backend) both reports have, with its verdict."""
    base_rows = {r["resolution"]: r for r in base["rows"]}
    out = []
    for row in new["rows"]:
        old = base_rows.get(row["resolution"])
        if old is None:
            continue
        for backend in backends:
            if backend == relative_to or backend not in row or backend not in old:
                continue
            if relative_to and (relative_to not in row or relative_to not in old):
                continue
            b, c, change, low, high = change_of(old, row, relative_to, seed, backend=backend)
            if change > threshold and low > 0:
                verdict = "REGRESSION"
            elif change > threshold:
                verdict = "slower, not significant"
            elif change < -threshold and high < 0:
                verdict = "faster"
            else:
                verdict = "ok"
            out.append(Change(row["resolution"], backend, b, c, change, low, high, verdict))
    return out
