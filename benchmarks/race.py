"""Race two builds of one model against each other: fresh processes, alternating (``tunekit.racing``).

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
from pathlib import Path

from tunekit.racing import race
from tunekit.runtime import read_manifest


def library(directory: str, res: int) -> tuple[Path, dict]:
    """The library built at ``res`` in an artifact directory, and its manifest entry."""
    entry = next(e for e in read_manifest(directory)["artifacts"] if e["resolution"] == [res, res])
    return Path(directory) / entry["file"], entry


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
        result = race(library(args.a, res), library(args.b, res), args.pairs, args.runs, args.gap,
                      lambda pair, a, b, res=res: print(f"{res} pair {pair + 1}: A {a:.2f} ms  B {b:.2f} ms"
                                                        f"  B/A {b / a:.3f}", flush=True))
        print(f"{res}: median B/A {result.ratio:.3f} over {len(result.pairs)} pairs;"
              f" B faster in {result.wins} (sign test p={result.p:.3f})", flush=True)


if __name__ == "__main__":
    main()
