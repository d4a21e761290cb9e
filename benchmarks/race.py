"""Race two builds of one model against each other: fresh processes, alternating.

For each pair, one fresh process loads A's library at the resolution and times
--runs whole runs, then one loads B's (the order flips every pair, so a drift of
the machine falls on both). One process is one sample: TVM's speed is set when
its process starts. Prints each pair's medians and, per resolution, the median of
B/A and how many pairs B won, with a sign test.

    tunekit build --model resnet50 --res 112 --db BEFORE.db --out /tmp/a
    tunekit build --model resnet50 --res 112 --db AFTER.db --out /tmp/b
    python benchmarks/race.py /tmp/a /tmp/b --res 112 --pairs 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from scipy.stats import binomtest

WORKER = """
import json, sys, time
import numpy as np
import tunekit
from tunekit.runtime import read_manifest
directory, res, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
entry = next(e for e in read_manifest(directory)["artifacts"] if e["resolution"] == [res, res])
artifact = tunekit.load(directory, entry["file"])
x = np.random.default_rng(0).standard_normal(artifact.input["shape"]).astype(artifact.input["dtype"])
for _ in range(5):
    artifact.run(x)
times = []
for _ in range(runs):
    start = time.perf_counter()
    artifact.run(x)
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def median_ms(directory: str, res: int, runs: int) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, directory, str(res), str(runs)],
                         check=True, capture_output=True, text=True).stdout
    return statistics.median(json.loads(out.strip().splitlines()[-1])) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="artifact directory A (the baseline)")
    parser.add_argument("b", help="artifact directory B")
    parser.add_argument("--res", required=True, help="comma-separated resolutions built in both")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=40, help="timed runs in each process")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of quiet between processes")
    args = parser.parse_args()

    for res in (int(r) for r in args.res.split(",")):
        ratios = []
        for pair in range(args.pairs):
            order = [("a", args.a), ("b", args.b)] if pair % 2 == 0 else [("b", args.b), ("a", args.a)]
            got = {}
            for name, directory in order:
                time.sleep(args.gap)
                got[name] = median_ms(directory, res, args.runs)
            ratios.append(got["b"] / got["a"])
            print(f"{res} pair {pair + 1}: A {got['a']:.2f} ms  B {got['b']:.2f} ms  B/A {ratios[-1]:.3f}", flush=True)
        wins = sum(r < 1 for r in ratios)
        p = binomtest(wins, len(ratios)).pvalue
        print(f"{res}: median B/A {statistics.median(ratios):.3f} over {len(ratios)} pairs;"
              f" B faster in {wins} (sign test p={p:.3f})", flush=True)


if __name__ == "__main__":
    main()
