"""Rank each task's best records by their time inside a whole run of the built model.

Tuning times a kernel alone, tens of calls in a row, its weights warm in cache. In a run of a model
whose weights do not fit in the cache (resnet50: 102 MB) each layer finds its weights cold and its
input warm from the layer before, and the kernel fastest alone is often not the fastest there
(benchmarks/README.md, session 12: resnet50's stage 4 convolutions at 112 take 2x their tuned time).
``rerank`` builds the model once per candidate rank (build i takes every task's i-th candidate, or its
last), runs the builds in turn, timing every call the Relax VM makes, and stores each candidate's time
a call in the run (``records.run_sec``). From then on the record fastest in the run is the workload's
best (``database.BEST_FIRST``): build, prune and export take it.

Per-task times taken from different builds do not add up: a task's time in a run depends on what its
neighbours left in the cache, so the build of every task's fastest can be no faster than the build it
was picked against (on znver5 a rerank claimed 12% at resnet50 112 that races in fresh processes did
not find; benchmarks/README.md, session 19). So by default the choice is checked before it is stored:
the build of every task's choice races the build of the bests before in fresh processes
(``tunekit.racing``), and the times are stored only if it wins (``Verdict``).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunekit.keys import Key
from tunekit.racing import Race, race
from tunekit.targets import TargetSpec

DEFAULT_TOP = 4
DEFAULT_VERIFY = 6  # pairs of fresh processes in the race that checks a rerank's choices
DEFAULT_RUNS = 20  # timed runs of each build, split into ROUNDS rounds taken in turn over the builds
ROUNDS = 4
PREPACKED = "_prepacked"  # the suffix SplitLayoutRewritePreproc gives a task whose weights it packs


@dataclass
class Ranked:
    """One task's candidates as timed in the run."""

    task: str
    uses: int  # calls a run makes
    run_us: list[float]  # per candidate (0: the best before), microseconds a call
    chosen: int  # the candidate with the least time

    @property
    def saved_us(self) -> float:
        """Time a run saves by the choice, against the best before."""
        return (self.run_us[0] - self.run_us[self.chosen]) * self.uses


@dataclass
class Verdict:
    """The build of the choices (B) raced against the build of the bests before (A)."""

    race: Race

    @property
    def kept(self) -> bool:
        """The choices won: B's median time over A's, across the pairs, is below 1."""
        return self.race.ratio < 1


def call_times(artifact, x, runs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Time every call the Relax VM makes in ``runs`` runs of ``artifact`` on ``x``: per callee, its summed
    time in each run (us), and its calls a run. The timer round every call slows the run a little."""
    import time

    from tvm.runtime.vm import VMInstrumentReturnKind

    this_run: dict[str, list[float]] = {}
    started: list[float] = []

    def instrument(func, symbol, before, ret, *args):
        if before:
            started.append(time.perf_counter())
        else:
            this_run.setdefault(symbol, []).append((time.perf_counter() - started.pop()) * 1e6)
        return VMInstrumentReturnKind.NO_OP  # run the call as usual

    per_run: dict[str, list[float]] = {}
    calls: dict[str, int] = {}
    artifact.set_instrument(instrument)
    try:
        for _ in range(runs):
            this_run.clear()
            artifact.run(x)
            for symbol, times in this_run.items():
                per_run.setdefault(symbol, []).append(sum(times))
                calls[symbol] = len(times)
    finally:
        artifact.set_instrument(None)
    return per_run, calls


def _candidate_database(db, chosen: dict[int, object]):
    """A MetaSchedule database holding, per workload id, the one record ``chosen`` gives it."""
    from tvm.s_tir import meta_schedule as ms

    memory = ms.database.MemoryDatabase()
    for wid, record in chosen.items():
        workload = memory.commit_workload(db.workload_by_id(wid).mod)
        memory.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                             record.target, record.args_info))
    return memory


def rerank(db, spec: TargetSpec, key: Key, graph, reference: Callable, top: int = DEFAULT_TOP,
           runs: int = DEFAULT_RUNS, on_build: Callable[[int, int], None] | None = None,
           verify: int = DEFAULT_VERIFY) -> tuple[list[Ranked], Verdict | None]:
    """Time the ``top`` candidates of every task of ``graph`` (``TuningDatabase.rerank_candidates``) inside
    whole runs and return the tasks with two or more candidates, largest saving first, and, where a task
    changes its record and ``verify`` (pairs of fresh processes; 0: no check), the ``Verdict`` of the race
    of the new build against the old. The times go into ``db`` unless the verdict is against them. Every
    build is verified against ``reference`` (image -> output) as ``build`` does. ``on_build(rank, ranks)``
    reports each build (the check's build as rank ``ranks``)."""
    import numpy as np

    from tunekit import building, frontend, onnxutil
    from tunekit.common import sample_input
    from tunekit.runtime import Artifact

    target = spec.tvm_target()
    tasks, _ = frontend.tasks_of(graph, target, spec.conv_layout, spec.conv_winograd)
    candidates = {}  # task name -> (workload id, uses, [(record id, record)])
    for task in tasks:
        wid = db.find_workload(task.mod)
        rows = db.rerank_candidates(wid, top) if wid is not None else []
        if rows:
            candidates[task.name] = (wid, task.weight, rows)
    ranks = max((len(rows) for _, _, rows in candidates.values()), default=0)
    if ranks < 2:
        return [], None
    inputs, outputs = onnxutil.graph_inputs(graph), onnxutil.graph_outputs(graph)
    timed: list[dict[str, list[float]]] = [{} for _ in range(ranks)]
    calls: dict[str, int] = {}
    verdict = None
    with tempfile.TemporaryDirectory() as tmp:

        def built(name: str, chosen: dict) -> tuple[Path, dict]:
            """The library of ``chosen`` {workload id: record}, verified, and its manifest entry (not loaded)."""
            executable, tuned, _, fallbacks = building.compile_module(graph, spec, _candidate_database(db, chosen),
                                                                      key, transfer=False)
            path = Path(tmp) / f"{name}.so"
            done = building.write_verified(key, spec, graph, executable, path, tuned, {}, fallbacks, 0.0, True,
                                           lambda _key: reference, path)
            return path, done.to_entry(spec, inputs[0].to_json(), outputs[0].to_json(), path)

        libraries = []
        for rank in range(ranks):
            if on_build:
                on_build(rank, ranks)
            libraries.append(built(f"rank{rank}", {wid: rows[min(rank, len(rows) - 1)][1]
                                                   for wid, _, rows in candidates.values()}))
        artifacts = [Artifact(path, entry) for path, entry in libraries]
        x = sample_input(artifacts[0].input["shape"])
        for _ in range(ROUNDS):  # in turn, so a drift of the machine's speed falls on every build alike
            for rank, artifact in enumerate(artifacts):
                for _ in range(3):
                    artifact.run(x)
                per_run, calls = call_times(artifact, x, max(1, runs // ROUNDS))
                for symbol, times in per_run.items():
                    timed[rank].setdefault(symbol.removesuffix(PREPACKED), []).extend(times)
        del artifacts, artifact  # unloaded: the check below races in fresh processes
        calls = {symbol.removesuffix(PREPACKED): n for symbol, n in calls.items()}
        run_us = {name: [statistics.median(timed[rank][name]) / calls[name] for rank in range(len(rows))]
                  for name, (_, _, rows) in candidates.items() if name in calls}
        choice = {name: int(np.argmin(us)) for name, us in run_us.items()}
        if verify and any(choice.values()):
            if on_build:
                on_build(ranks, ranks)
            after = built("chosen", {wid: rows[choice.get(name, 0)][1] for name, (wid, _, rows) in candidates.items()})
            verdict = Verdict(race(libraries[0], after, verify, 2 * runs))
    ranked = []
    for name, (wid, uses, rows) in candidates.items():
        if name not in run_us:
            continue
        if verdict is None or verdict.kept:
            db.set_run_secs(wid, {rid: us * 1e-6 for (rid, _), us in zip(rows, run_us[name])})
        if len(rows) >= 2:
            ranked.append(Ranked(name, calls[name], run_us[name], choice[name]))
    db.checkpoint()
    return sorted(ranked, key=lambda r: -r.saved_us), verdict
