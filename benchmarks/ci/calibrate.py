"""Calibrate `tunekit compare` on this machine: false alarms on A/A runs and the smallest regression caught.

    python benchmarks/ci/calibrate.py --runs 20 --out benchmarks/ci/calibration

builds the CI benchmark's artifacts once, then runs `make bench-ci`'s bench command ``--runs`` times on
the same artifacts (A/A: nothing changes between runs), keeping every report in ``--out``. Then, for
every pair of runs (base, new):

- false alarms: how many pairs `compare` calls a regression, in absolute and --relative-to mode
  (every pair of runs, earlier one as base: 190 pairs for 20 runs);
- power: the new run's tuned samples scaled by 1 + d (a planted regression of d, on real noise), and
  how many pairs `compare` catches, for d in 5%, 10%, 15%, 20%.

Run it on a quiet machine: nothing else on the cores while it measures. ``--reuse`` skips the runs
and recomputes from the reports already in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

from tunekit import regression

MODEL, RES, BASELINE = "resnet18", "112,224", "onnxruntime"
PLANTED = (0.05, 0.10, 0.15, 0.20)


def bench(out: Path, artifacts: Path, i: int) -> Path:
    report = out / f"run{i:02d}.json"
    subprocess.run(["tunekit", "bench", "--model", MODEL, "--res", RES, "--artifacts", str(artifacts),
                    "--backends", f"tuned,{BASELINE}", "--output", str(report), "--format", "json"],
                   check=True, stdout=subprocess.DEVNULL)
    return report


def planted(report: dict, d: float) -> dict:
    out = copy.deepcopy(report)
    for row in out["rows"]:
        s = row["tuned"]
        s["raw_ms"] = [v * (1 + d) for v in s["raw_ms"]]
        s["median_ms"] *= 1 + d
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ci/calibration"))
    parser.add_argument("--threshold", default="5%")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    artifacts = args.out / "artifacts"
    if not args.reuse:
        subprocess.run(["tunekit", "build", "--model", MODEL, "--res", RES, "--out", str(artifacts)], check=True)
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            bench(args.out, artifacts, i)
    reports = [json.loads(p.read_text()) for p in sorted(args.out.glob("run*.json"))]
    threshold = regression.parse_threshold(args.threshold)
    pairs = [(reports[i], reports[j]) for i in range(len(reports)) for j in range(i + 1, len(reports))]
    lines = [f"{len(reports)} A/A runs, {len(pairs)} pairs (earlier run as base), threshold {threshold:.0%}, "
             f"{MODEL} at {RES}, tuned against {BASELINE}", ""]
    lines.append("| mode | false alarms | caught at +5% | +10% | +15% | +20% | median change A/A (min .. max) |")
    lines.append("|---|---|---|---|---|---|---|")
    summary = {}
    for mode, relative in (("absolute", None), (f"relative to {BASELINE}", BASELINE)):
        def verdicts(base, new):
            return regression.compare(base, new, threshold, ["tuned"], relative)

        aa = [verdicts(b, n) for b, n in pairs]
        alarms = sum(any(c.regressed for c in cs) for cs in aa)
        changes = sorted(c.change for cs in aa for c in cs)
        caught = {d: sum(any(c.regressed for c in verdicts(b, planted(n, d))) for b, n in pairs) for d in PLANTED}
        summary[mode] = {"false_alarms": alarms, "pairs": len(pairs), "caught": caught, "aa_changes": changes}
        lines.append(f"| {mode} | {alarms}/{len(pairs)} | " + " | ".join(f"{caught[d]}/{len(pairs)}" for d in PLANTED)
                     + f" | {changes[len(changes) // 2]:+.1%} ({changes[0]:+.1%} .. {changes[-1]:+.1%}) |")
    machine = reports[0]["machine"]
    lines += ["", f"Host: {machine['cpu']} (LLVM mcpu {machine['mcpu']}; {', '.join(machine['isa'])}), "
              f"{reports[0]['threads']} threads; tunekit {reports[0]['versions']['tunekit']}, "
              f"commit {reports[0].get('git_commit')}; {reports[0]['date']} .. {reports[-1]['date']}."]
    text = "\n".join(lines)
    (args.out / "calibration.md").write_text(text + "\n")
    (args.out / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
