"""Per-resolution MetaSchedule tuning into the SQLite log database, resumable.

The plan: for each resolution, import the graph, ``frontend.prepare`` it and
take its runtime tasks; tasks whose TIR is identical across resolutions (or
models) are tuned once. Every unique task gets its share of the budget (tasks
with a single possible schedule get one measurement), minus the trials already
in the database, so running the same command again resumes where it stopped.
Tasks are tuned one at a time with one shared builder, runner and XGBoost cost
model; every measured candidate is committed as it arrives.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunekit.errors import TunekitError
from tunekit.keys import Key
from tunekit.targets import TargetSpec, default_threads

DEFAULT_TRIALS_PER_TASK = 64


@dataclass(frozen=True)
class Measurement:
    """How candidates are timed while tuning (the runner's EvaluatorConfig).

    Each candidate runs ``repeat`` times; each repeat is ``number`` calls, more if
    needed to last ``min_repeat_ms``; the candidate's time is the mean of the repeats.
    ``cpu_cache_flush`` flushes every argument but the first before each repeat, not
    each call, so it takes one call a repeat (``number`` 1, ``min_repeat_ms`` 0).
    """

    number: int = 1
    repeat: int = 3
    min_repeat_ms: int = 40
    timeout_sec: int = 30
    cpu_cache_flush: bool = False

    def __post_init__(self):
        if self.cpu_cache_flush and (self.number != 1 or self.min_repeat_ms > 0):
            raise ValueError("a cache flush precedes each repeat: with it, a repeat must be one call"
                             f" (number 1, min_repeat_ms 0), not number {self.number}, min_repeat_ms"
                             f" {self.min_repeat_ms}")


# Single calls, each after MetaSchedule's flush of every argument but the first (the input): the weights
# and output come from memory, as in a whole run of a model whose weights outgrow the cache (tune --cache-flush).
COLD_WEIGHTS = Measurement(number=1, repeat=10, min_repeat_ms=0, cpu_cache_flush=True)


@dataclass
class PlannedTask:
    """A unique workload to tune and where it is used."""

    wid: int
    name: str
    mod: object
    searchable: bool
    budget: int
    done: int
    model: str = ""
    batch: int = 1
    uses: list[tuple[int, int]] = field(default_factory=list)  # (resolution, weight)

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.done)


@dataclass
class Plan:
    tasks: list[PlannedTask]
    per_resolution: dict[int, int]  # resolution -> runtime tasks
    weight_only: dict[int, list[str]]  # resolution -> names of tasks lifted into the weight transform
    anchors: list[int] = field(default_factory=list)  # resolutions tuned first, with the full budget

    @property
    def reused(self) -> int:
        return sum(min(t.done, t.budget) for t in self.tasks)

    @property
    def new(self) -> int:
        return sum(t.remaining for t in self.tasks)


@dataclass
class Progress:
    """What the tuner reports to its caller after every measured batch."""

    task_index: int
    task_count: int
    task: PlannedTask
    trials_done: int  # of this run, all tasks
    trials_total: int  # new trials planned for this run
    failed: int
    best_ms: float | None  # best measured time of the current task
    elapsed: float
    note: str | None = None  # what the seeding of a new task measured (transfer, default), or the re-measure
    noise: float | None = None  # median spread of the last batch's repeats, (max - min) / min


@dataclass
class TuneResult:
    plan: Plan
    trials_run: int
    failed: int
    seconds: float
    interrupted: bool = False


def _has_search_space(task_mod, target) -> bool:
    """Whether MetaSchedule's design space for ``task_mod`` has any decision to search."""
    from tunekit.fallback import design_spaces

    spaces, _ = design_spaces(task_mod, target, "main")
    return any(len(sch.trace.decisions) > 0 for sch in spaces)


TRANSFER_SHARE = 0.25


def default_anchor(sides: list[int]) -> int:
    """224 when swept (the resolution most models are trained and served at), else the middle one."""
    return 224 if 224 in sides else sorted(sides)[len(sides) // 2]


def plan(db, target, keys: list[Key], graph_of: Callable[[Key], object], trials: int | None,
         trials_per_task: int | None, transfer: bool = True, anchors: list[int] | None = None,
         layout: str | None = None, winograd: bool | None = None, only_new: bool = False) -> Plan:
    """Extract tasks for every key, deduplicate them, and give each its budget.

    ``trials`` is the total budget for this sweep, split over the unique
    searchable tasks; ``trials_per_task`` fixes each task's budget instead.
    With ``transfer`` and several resolutions, tasks of the ``anchors`` (default:
    ``default_anchor``) get the full per-task budget and are tuned first; the
    others get a quarter of it, seeded with schedules adapted from the nearest
    tuned resolution, and are tuned nearest-to-an-anchor first. ``only_new`` keeps only the
    tasks the database has measured nothing for.

    Raises
    ------
    TunekitError
        ``trials`` too small to give every searchable task at least one trial.
    """
    from tunekit import frontend
    from tunekit.tuning_database import TaskUse

    by_wid: dict[int, PlannedTask] = {}
    per_resolution, weight_only = {}, {}
    for key in keys:
        tasks, lifted = frontend.tasks_of(graph_of(key), target, layout, winograd)
        per_resolution[key.height] = len(tasks)
        weight_only[key.height] = lifted
        for task in tasks:
            wid = db.note_task(task.mod, TaskUse(key.model, key.height, key.batch, task.name, task.weight))
            if wid not in by_wid:
                by_wid[wid] = PlannedTask(wid, task.name, task.mod, _has_search_space(task.mod, target), 0,
                                          db.trials(wid), key.model, key.batch)
            by_wid[wid].uses.append((key.height, task.weight))
    planned = [t for t in by_wid.values() if not only_new or t.done == 0]
    searchable = [t for t in planned if t.searchable]
    sides = sorted(per_resolution)
    anchors = [a for a in (anchors or [default_anchor(sides)]) if a in sides] if transfer and len(sides) > 1 else []

    def distance(task):
        return min(abs(r - a) for r, _ in task.uses for a in anchors) if anchors else 0

    def share(task):  # transfer-seeded tasks away from the anchors get a quarter of an anchor task's budget
        return 1.0 if distance(task) == 0 else TRANSFER_SHARE

    if trials_per_task is None:
        if trials is None:
            trials_per_task = DEFAULT_TRIALS_PER_TASK
        else:
            if searchable and trials < len(searchable):
                raise TunekitError(f"--trials {trials} is less than the {len(searchable)} tasks to tune; "
                                   f"give at least {len(searchable)} (or use --trials-per-task)")
            trials_per_task = int(trials / max(1e-9, sum(share(t) for t in searchable)))
    for task in planned:
        task.budget = max(1, int(trials_per_task * share(task))) if task.searchable else 1
    planned.sort(key=lambda t: (distance(t), min(r for r, _ in t.uses)))
    return Plan(planned, per_resolution, weight_only, anchors)


def _logger_setup(log_path: Path) -> logging.Logger:
    """Send MetaSchedule's per-trial chatter to a file beside the database, not the terminal."""
    root = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    return root


class _Stop(Exception):
    """Raised inside MetaSchedule's loop to end tuning after a Ctrl-C."""


class _StopOnInterrupt:
    """Turn the first Ctrl-C into a request to stop at the next batch boundary.

    A KeyboardInterrupt raised while MetaSchedule's C++ loop calls back into
    Python is swallowed there and tuning carries on; so the signal only sets a
    flag, which the measure callback checks. A second Ctrl-C aborts at once.
    """

    def __init__(self):
        self.requested = False

    def __enter__(self):
        import signal

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        self.previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGINT, self.previous)


def _measure_callback(db, on_batch: Callable[[int, int, float | None], None], stop: _StopOnInterrupt):
    """A MeasureCallback that records failures as data and reports each batch.

    It runs before the database commit: after a Ctrl-C it raises, so the batch in
    flight (whose workers the signal also killed) is not recorded as failures."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Report(PyMeasureCallback):
        def __init__(self):
            super().__init__()
            self.wid = None
            self.noise = None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if stop.requested:
                raise _Stop()
            failed = 0
            best = None
            self.noise = batch_noise(runner_results)
            for build, run in zip(builder_results, runner_results):
                if build.error_msg:
                    failed += 1
                    db.note_failure(self.wid, "build", str(build.error_msg))
                elif run.error_msg:
                    failed += 1
                    db.note_failure(self.wid, "run", str(run.error_msg))
                elif run.run_secs:
                    secs = sum(float(s) for s in run.run_secs) / len(run.run_secs)
                    best = secs if best is None else min(best, secs)
            on_batch(len(runner_results), failed, best)

    return Report()


def search_strategy(budget: int):
    """MetaSchedule's evolutionary search, its population scaled to the task's budget.

    The stock population (512, evolved 4 generations) costs 5-15 s of search per
    batch on 2 cores whatever the batch size; for a budget of a few trials that
    search is most of the time. Budgets of 64 trials and more get the stock search.
    """
    from tvm.s_tir import meta_schedule as ms

    population = max(64, min(512, 8 * budget))
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 init_min_unmeasured=min(50, population // 2))


def build_candidate(mod, target, _params):
    """Build one candidate in a builder worker: TVM's default_build without its import of
    ``tvm.s_tir.tensor_intrin``.

    That import parses every registered tensor intrinsic from TVMScript (14-23 s
    here), and LocalBuilder starts fresh workers for every batch, so it cost
    ~25 s per batch while the build itself takes milliseconds. Candidates
    arrive already scheduled (tensorized ones carry the intrinsic's body), so
    the build needs no registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def make_runner(spec: TargetSpec, measurement: Measurement, rpc: tuple[str, int, str] | None):
    """The MetaSchedule runner: local, or on the devices behind an RPC tracker."""
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.EvaluatorConfig(number=measurement.number, repeat=measurement.repeat,
                                       min_repeat_ms=measurement.min_repeat_ms,
                                       enable_cpu_cache_flush=measurement.cpu_cache_flush)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=config, timeout_sec=measurement.timeout_sec)
    host, port, key = rpc
    from tunekit.rpc import check_tracker

    servers = check_tracker(host, port, key)
    rpc_config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                     session_timeout_sec=measurement.timeout_sec * 4)
    # one measurement at a time per device: as many workers as devices registered
    return ms.runner.RPCRunner(rpc_config=rpc_config, evaluator_config=config, max_workers=servers)


def measurers(db, spec: TargetSpec, measurement: Measurement, rpc: tuple[str, int, str] | None = None):
    """The builder and runner that measure candidates, and the builder's worker count.

    Candidates are measured on the threads the artifacts will run with: TVM's pool in the runner's
    workers reads TVM_NUM_THREADS (unset, it takes half the logical CPUs, one of two here)."""
    from tvm.s_tir import meta_schedule as ms

    threads = default_threads(spec)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    db.threads = threads if rpc is None else None  # a remote device's threads are its rpc_server's
    workers = max(1, os.cpu_count() or 1)
    builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=measurement.timeout_sec,
                                      f_build=build_candidate)
    return builder, make_runner(spec, measurement, rpc), workers


def measure(task: PlannedTask, schedules: list, target, builder, runner, db, source: str) -> list:
    """Build and run ready-made schedules of ``task``: per schedule, (seconds per repeat, its ArgInfo), or
    None where it failed (failures are recorded in ``db`` as data)."""
    from tvm.s_tir import meta_schedule as ms

    if not schedules:
        return []
    infos = [ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True) for sch in schedules]
    builds = builder.build([ms.builder.BuilderInput(sch.mod, target) for sch in schedules])
    ok = [i for i, b in enumerate(builds) if not b.error_msg]
    for i, b in enumerate(builds):
        if b.error_msg:
            db.note_failure(task.wid, "build", f"{source} schedule: {b.error_msg}")
    futures = runner.run([ms.runner.RunnerInput(builds[i].artifact_path, "cpu", infos[i]) for i in ok])
    out: list = [None] * len(schedules)
    for i, future in zip(ok, futures):
        result = future.result()
        if result.error_msg:
            db.note_failure(task.wid, "run", f"{source} schedule: {result.error_msg}")
        else:
            out[i] = ([float(x) for x in result.run_secs], infos[i])
    return out


def measure_schedules(db, task: PlannedTask, schedules: list, source: str, target, builder, runner) -> list:
    """Build and measure ready-made schedules of ``task`` and store them with ``source``.

    Used before searching a task with no records: its default schedule (source
    'default', the one an untuned build falls back to), its best records on other
    CPU classes (source 'sibling') and schedules adapted from other resolutions
    (source 'transfer'). The evolutionary search seeds
    its population with the database's best, so the search starts from them and
    the tuned result measures no worse (up to noise). Returns the mean seconds of each schedule
    (None where it failed).
    """
    from tvm.s_tir import meta_schedule as ms

    secs: list = [None] * len(schedules)
    with db.storing_as(source):
        for i, measured in enumerate(measure(task, schedules, target, builder, runner, db, source)):
            if measured is None:
                continue
            run_secs, info = measured
            db.commit_tuning_record(ms.database.TuningRecord(schedules[i].trace, db.commit_workload(task.mod),
                                                             run_secs, target, info))
            secs[i] = sum(run_secs) / len(run_secs)
    return secs


REMEASURE_TOP = 4


def _measure_again(db, wid: int, rows: list, mod, name: str, target, builder, runner):
    """Rebuild and run ``rows`` (``best_records`` of workload ``wid``) back to back: (record ids, their
    stored seconds, the new measurements: (seconds per repeat, ArgInfo) or None where it failed)."""
    from tunekit import fallback

    _, postprocs = fallback.design_spaces(mod, target, name)
    schedules, ids, before = [], [], []
    for rid, record, sec in rows:
        try:
            schedules.append(fallback.replay(mod, record.trace, postprocs))
        except ValueError:
            continue
        ids.append(rid)
        before.append(sec)
    task = PlannedTask(wid, name, mod, True, 0, 0)
    return ids, before, measure(task, schedules, target, builder, runner, db, "remeasure")


def remeasure_best(db, task: PlannedTask, target, builder, runner, top: int = REMEASURE_TOP) -> str | None:
    """Measure the ``top`` best records of ``task`` again, back to back, and rank them by the new times.

    On a shared machine a candidate measured during a busy moment can win by
    luck (a demo tuned beside other work chose schedules 2.4x slower than
    oneDNN at 224). The best few are rebuilt and re-run together; each record's
    time becomes the slower of its two measurements, so only a candidate that
    wins again stays first. Returns a note for the progress, None when there
    was nothing to compare.
    """
    rows = db.best_records(task.wid, top)
    if len(rows) < 2:
        return None
    ids, before, again = _measure_again(db, task.wid, rows, task.mod, task.name, target, builder, runner)
    for rid, old, new in zip(ids, before, again):
        db.set_mean_sec(rid, max(old, sum(new[0]) / len(new[0])) if new else None)
    kept = db.best_records(task.wid, 1)
    if not kept or not ids:
        return None
    moved = kept[0][0] != ids[0]
    return (f"re-measured best {len(ids)}: {before[0] * 1e6:.1f} us -> {kept[0][2] * 1e6:.1f} us"
            + (" (another candidate won the re-run)" if moved else ""))


def remeasure_database(db, spec: TargetSpec, top: int = REMEASURE_TOP,
                       on_workload: Callable[[int, int, str], None] | None = None) -> int:
    """Measure the ``top`` best records of every workload with two or more of them again, in this one
    sitting, and store the new times in place of the old.

    A record keeps the time of the moment it was measured, and this machine's
    speed drifts by 15-26% within an hour (benchmarks/README.md), so records
    merged from two databases (two sessions' reference sets) do not compare:
    a plain ``prune`` keeps whichever was measured on the faster day. Prune each
    set to its best first, merge, re-measure, then prune. Returns the number of
    workloads re-measured; ``on_workload(index, count, note)`` reports each.
    """
    target = spec.tvm_target()
    builder, runner, _ = measurers(db, spec, Measurement())
    wids = db.contested_workloads()
    for index, wid in enumerate(wids):
        rows = db.best_records(wid, top)
        ids, before, again = _measure_again(db, wid, rows, db.workload_by_id(wid).mod, "main", target, builder,
                                            runner)
        for rid, new in zip(ids, again):
            db.set_mean_sec(rid, sum(new[0]) / len(new[0]) if new else None)
        if not on_workload:
            continue
        if not ids:
            on_workload(index, len(wids), f"workload {wid}: no record replays")
            continue
        kept = db.best_records(wid, 1)
        after = f"{kept[0][2] * 1e6:.1f} us" if kept else "none ran"
        on_workload(index, len(wids), f"workload {wid}: {len(ids)} records, best {before[0] * 1e6:.1f} us -> {after}")
    db.checkpoint()
    return len(wids)


def batch_noise(runner_results) -> float | None:
    """The median over a batch's candidates of (max - min) / min of their repeats: how noisy it measured."""
    spreads = []
    for run in runner_results:
        secs = [float(x) for x in (run.run_secs or [])]
        if not run.error_msg and len(secs) > 1 and min(secs) > 0:
            spreads.append((max(secs) - min(secs)) / min(secs))
    return sorted(spreads)[len(spreads) // 2] if spreads else None


NOISY = 0.10  # repeats of one candidate differing by more than this: say so in the progress


def seed_task(db, task: PlannedTask, target, builder, runner, transfer: bool) -> tuple[int, str]:
    """Measure the default schedule, the workload's best records on other CPU classes of this vector ISA
    (imported), and with ``transfer`` the schedules adapted from the nearest tuned resolutions, of a task
    with no records here. Returns (records stored, a note for the progress)."""
    from tunekit import fallback
    from tunekit import transfer as xfer

    notes = []
    stored = 0

    def seed(source: str, found: list, skipped: list[str]) -> None:
        """Measure ``found`` [(where it came from, schedule)] and store it with ``source``; note each."""
        nonlocal stored
        secs = measure_schedules(db, task, [sch for _, sch in found], source, target, builder, runner)
        stored += sum(s is not None for s in secs)
        for (origin, _), sec in zip(found, secs):
            notes.append(f"from {origin}: " + (f"{sec * 1e6:.1f} us" if sec is not None else "failed"))
        notes.extend(f"skipped {reason}" for reason in skipped)

    seed("sibling", *xfer.siblings(db, task.mod, target, task.wid, task.name))
    if transfer:
        adapted, skipped = xfer.candidates(db, task.mod, target, task.model, task.batch, task.name,
                                           task.uses[0][0], task.wid, limit=min(2, max(1, task.budget - 1)))
        seed("transfer", [(donor.resolution, sch) for donor, sch in adapted], skipped)
    # Always measured, even past a 1-trial budget: it is the untuned build's schedule, and having it in
    # the database is what keeps a tuned build from ever being slower than an untuned one.
    default = fallback.cpu_schedule(task.mod, target, task.name)
    if default is not None:
        (sec,) = measure_schedules(db, task, [default], "default", target, builder, runner)
        stored += sec is not None
        notes.append(f"default: {sec * 1e6:.1f} us" if sec is not None else "default: failed")
    return stored, "; ".join(notes)


def tune(db, spec: TargetSpec, the_plan: Plan, log_path: Path, measurement: Measurement = Measurement(),
         rpc: tuple[str, int, str] | None = None, seed: int = 0,
         on_progress: Callable[[Progress], None] | None = None, transfer: bool = True) -> TuneResult:
    """Tune every task of ``the_plan`` that has budget left; records land in ``db`` as measured.

    A KeyboardInterrupt stops after the batch in flight is committed and returns
    with ``interrupted=True``; running the same plan again resumes.
    """
    from tvm.s_tir import meta_schedule as ms

    target = spec.tvm_target()
    _logger_setup(log_path)
    todo = [t for t in the_plan.tasks if t.remaining > 0]
    total = sum(t.remaining for t in todo)
    start = time.time()
    state = {"done": 0, "failed": 0, "index": 0, "best": None, "note": None, "total": total}
    if not todo:
        return TuneResult(the_plan, 0, 0, 0.0)

    builder, runner, workers = measurers(db, spec, measurement, rpc)
    cost_model = ms.cost_model.XGBModel(num_tuning_cores=workers, tree_method="auto")

    def on_batch(count, failed, best):
        state["done"] += count
        state["failed"] += failed
        if best is not None:
            state["best"] = best if state["best"] is None else min(state["best"], best)
        if on_progress:
            task = todo[state["index"]]
            on_progress(Progress(state["index"], len(todo), task, state["done"], state["total"], state["failed"],
                                 None if state["best"] is None else state["best"] * 1e3, time.time() - start,
                                 state["note"], report.noise))

    stop = _StopOnInterrupt()
    report = _measure_callback(db, on_batch, stop)
    interrupted = False
    with stop:
        for index, task in enumerate(todo):
            if stop.requested:
                break
            state["index"], state["best"] = index, None
            report.wid, report.noise = task.wid, None  # a new task: the last task's batch says nothing of it
            if on_progress:
                on_progress(Progress(index, len(todo), task, state["done"], state["total"], state["failed"], None,
                                     time.time() - start))
            if task.done == 0 and task.searchable and target.kind.name == "llvm":
                room = task.remaining
                stored, note = seed_task(db, task, target, builder, runner, transfer)
                state["total"] += max(0, stored - room)  # seeding past a small budget: the plan grows, said so
                if stored:
                    task.done = db.trials(task.wid)
                    state["note"] = f"seeded: {note}"
                    on_batch(stored, 0, db.best_sec(task.wid))
                    state["note"] = None
                    if task.remaining == 0:
                        continue
            context = ms.TuneContext(
                mod=task.mod, target=target, space_generator="post-order-apply",
                search_strategy=search_strategy(task.budget), task_name=task.name, logger=logging.getLogger(f"tvm.s_tir.meta_schedule.task.{task.name}"),
                rand_state=seed + task.wid, num_threads=workers).clone()
            try:
                ms.tune_tasks(
                    tasks=[context], task_weights=[1.0], work_dir=str(log_path.parent),
                    max_trials_global=task.remaining, max_trials_per_task=task.remaining,
                    num_trials_per_iter=min(64, task.remaining), builder=builder, runner=runner, database=db,
                    cost_model=cost_model,
                    measure_callbacks=[report, *ms.MeasureCallback.create("default")],
                    task_scheduler="round-robin")
            except Exception:
                if not stop.requested:
                    raise
            task.done = db.trials(task.wid)
            if not stop.requested and task.searchable and rpc is None:
                note = remeasure_best(db, task, target, builder, runner)
                if note and on_progress:
                    on_progress(Progress(index, len(todo), task, state["done"], state["total"], state["failed"],
                                         db.best_sec(task.wid) * 1e3, time.time() - start, note))
        interrupted = stop.requested
    return TuneResult(the_plan, state["done"], state["failed"], time.time() - start, interrupted)
