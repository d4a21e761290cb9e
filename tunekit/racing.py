"""Two built libraries of one model raced against each other: fresh processes, alternating.

For each pair, one fresh process loads A and times whole runs, then one loads B (the order flips
every pair, so a drift of the machine falls on both). One process is one sample: TVM's speed is set
when its process starts. The same two resnet18 libraries timed in turn inside one process differed by
11% where fresh processes found them level (benchmarks/README.md, session 19), so nothing short of
this decides between two builds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

WORKER = """
import json, sys
from pathlib import Path
from tunekit.common import sample_input
from tunekit.racing import run_seconds
from tunekit.runtime import Artifact
path, entry, runs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
artifact = Artifact(Path(path), entry)
print(json.dumps(run_seconds(artifact, sample_input(artifact.input["shape"]), runs)))
"""


def run_seconds(artifact, x, runs: int, warmup: int = 5) -> list[float]:
    """Seconds of each of ``runs`` whole runs of a loaded artifact on ``x``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        artifact.run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        artifact.run(x)
        times.append(time.perf_counter() - start)
    return times


def median_ms(path: str | Path, entry: dict, runs: int) -> float:
    """Median ms of ``runs`` whole runs of the library at ``path`` (its manifest ``entry``) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", WORKER, str(path), json.dumps(entry), str(runs)],
                         check=True, capture_output=True, text=True).stdout
    return statistics.median(json.loads(out.strip().splitlines()[-1])) * 1e3


@dataclass
class Race:
    """Per pair (A ms, B ms)."""

    pairs: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [b / a for a, b in self.pairs]

    @property
    def ratio(self) -> float:
        """Median B/A: below 1, B is the faster."""
        return statistics.median(self.ratios)

    @property
    def wins(self) -> int:
        """Pairs B won."""
        return sum(r < 1 for r in self.ratios)

    @property
    def p(self) -> float:
        """Two-sided sign test of B's wins."""
        from scipy.stats import binomtest

        return binomtest(self.wins, len(self.pairs)).pvalue


def race(a: tuple[str | Path, dict], b: tuple[str | Path, dict], pairs: int, runs: int = 40, gap: float = 1.0,
         on_pair: Callable[[int, float, float], None] | None = None) -> Race:
    """Race library ``a`` against ``b`` (each (path, manifest entry)) over ``pairs`` pairs of fresh processes,
    ``runs`` timed runs in each, ``gap`` seconds of quiet before each; ``on_pair(pair, a_ms, b_ms)``."""
    result = Race()
    for pair in range(pairs):
        got = {}
        for name, (path, entry) in (("a", a), ("b", b)) if pair % 2 == 0 else (("b", b), ("a", a)):
            time.sleep(gap)
            got[name] = median_ms(path, entry, runs)
        result.pairs.append((got["a"], got["b"]))
        if on_pair:
            on_pair(pair, got["a"], got["b"])
    return result
