"""The Python API: the three jobs (tune, build, bench) on one resolved ``Job``.

The CLI is a thin layer over these: it parses options, makes a ``Job``, calls
one function, and prints. Progress comes back through callbacks, results as
return values; nothing here prints.

    import tunekit

    job = tunekit.Job(model="resnet18", res="112,224", db="tuning_logs/r18.db")
    tunekit.tune(job, trials_per_task=2)
    built = tunekit.build(job, out="artifacts/r18")
    report = tunekit.bench(job, artifacts="artifacts/r18", backends=["tuned", "onednn"])
    print(report["rows"][0]["speedup_vs_onednn"])
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunekit.common import native_stderr_to, sha256
from tunekit.errors import SpecError, TunekitError
from tunekit.keys import Key, model_name_for


def check_one_source(model: str | None, onnx: str | Path | None) -> None:
    """A model comes from the zoo or from an ONNX file: exactly one of the two."""
    if bool(model) == bool(onnx):
        raise SpecError("give exactly one of --model NAME or --onnx FILE")


@dataclass
class Job:
    """A model at a set of resolutions for one target, resolved once and checked.

    Exactly one of ``model`` (a zoo name, see ``tunekit models``) or ``onnx`` (a
    user's ONNX file with dynamic H/W). ``res`` is a resolution spec
    (``"112..448"``, ``"160,224"``) or a list of sides. ``target`` is a preset
    name, a targets/*.json file or a TVM target dict as JSON. ``db`` is the
    tuning database (default: $TUNEKIT_DB or tuning_logs/tunekit.db).
    Raises a ``TunekitError`` subclass, with a one-line message, for bad input.
    """

    model: str | None = None
    onnx: str | Path | None = None
    res: str | list[int] = "224"
    batch: int = 1
    weights: str | Path | None = None
    target: str = "host"
    db: str | Path | None = None
    # resolved
    name: str = field(init=False)
    sides: list[int] = field(init=False)
    keys: list[Key] = field(init=False)
    spec: object = field(init=False)  # TargetSpec
    db_path: Path = field(init=False)
    _db: object = field(init=False, default=None, repr=False)

    def __post_init__(self):
        from tunekit import database
        from tunekit.resolutions import sides_for
        from tunekit.targets import resolve_target

        check_one_source(self.model, self.onnx)
        spec = self.res if isinstance(self.res, str) else ",".join(str(int(s)) for s in self.res)
        self.sides = sides_for(spec, self.model)
        self.spec = resolve_target(self.target)
        if self.onnx:
            from tunekit import onnxutil

            self.onnx = str(self.onnx)
            onnxutil.load(self.onnx)  # a bad file fails here, in one line
        self.name = self.model or model_name_for(self.onnx)
        self.keys = [Key(self.name, s, s, self.batch) for s in self.sides]
        self.db_path = database.resolve_path(self.db)

    def graph(self, key: Key):
        """The static-shape ONNX graph at ``key``'s shape."""
        from tunekit import frontend

        return frontend.onnx_graph(key, model=self.model, onnx_file=self.onnx, weights=self.weights)

    def reference(self):
        """``key -> (image -> output)``: what built libraries are verified against."""
        from tunekit.building import reference_for

        return reference_for(self.model, self.onnx, self.weights)

    def open_database(self, create: bool = False):
        """The tuning database bound to this job's target (opened once), or None when there is none and not
        ``create``."""
        from tunekit import database

        if self._db is None and (create or self.db_path.is_file()):
            self._db = database.open_database(self.db_path, self.spec.tvm_target())
        return self._db


def plan(job: Job, trials: int | None = None, trials_per_task: int | None = None, transfer: bool = True,
         anchors: list[int] | None = None, rpc: tuple[str, int, str] | None = None, only_new: bool = False):
    """What ``tune`` would do: the tasks, their budgets, what the database already holds (a ``tuning.Plan``;
    with ``only_new``, only the tasks it holds nothing for). Checks first that there is somewhere to measure
    (the ``rpc`` tracker, or a GPU for GPU targets)."""
    from tunekit import tuning

    if rpc:
        from tunekit.rpc import check_tracker

        check_tracker(*rpc)
    elif job.spec.is_gpu:
        from tunekit.runtime import has_cuda

        if not has_cuda():
            raise TunekitError(f"target {job.spec.name} needs a GPU to measure on and this machine has none; "
                               "measure remotely with --rpc HOST:PORT --rpc-key KEY")
    if trials and trials_per_task:
        raise SpecError("give --trials or --trials-per-task, not both")
    if anchors and not transfer:
        raise SpecError("--anchor needs transfer; drop --no-transfer")
    missing = [a for a in anchors or () if a not in job.sides]
    if missing:
        raise SpecError(f"--anchor {missing[0]} is not one of the resolutions tuned "
                        f"({','.join(map(str, job.sides))})")
    db = job.open_database(create=True)
    try:  # planning registers the workloads: checkpointed so that a plain copy of the file holds them
        with native_stderr_to(job.db_path.with_suffix(".log")):
            return tuning.plan(db, job.spec.tvm_target(), job.keys, job.graph, trials, trials_per_task,
                               transfer=transfer, anchors=anchors, layout=job.spec.conv_layout,
                               winograd=job.spec.conv_winograd, only_new=only_new)
    finally:
        db.checkpoint()


def tune(job: Job, trials: int | None = None, trials_per_task: int | None = None, transfer: bool = True,
         anchors: list[int] | None = None, rpc: tuple[str, int, str] | None = None, seed: int = 0,
         the_plan=None, on_progress: Callable | None = None, cache_flush: bool = False):
    """Tune every task of ``job`` with MetaSchedule into its database; resumes what an earlier run began.

    ``rpc`` is (tracker host, port, device key) to measure remotely; ``the_plan`` a ``plan`` made
    with the same arguments (made here when None). ``on_progress``
    receives a ``tuning.Progress`` after every batch; ``cache_flush`` times candidates with cold weights
    (``tuning.COLD_WEIGHTS``). Returns a ``tuning.TuneResult``
    (``interrupted`` is True after Ctrl-C; every measured trial is kept).
    """
    from tunekit import tuning

    the_plan = the_plan or plan(job, trials, trials_per_task, transfer, anchors, rpc)
    log_path = job.db_path.with_suffix(".log")
    db = job.open_database(create=True)
    try:
        # the searched records' source, for this tune only: the job's database object outlives it
        with native_stderr_to(log_path), db.storing_as("cold" if cache_flush else "search"):
            measurement = tuning.COLD_WEIGHTS if cache_flush else tuning.Measurement()
            return tuning.tune(db, job.spec, the_plan, log_path, measurement, rpc=rpc, seed=seed,
                               on_progress=on_progress, transfer=transfer)
    finally:
        db.checkpoint()


def build(job: Job, out: str | Path | None = None, transfer: bool = True,
          on_done: Callable | None = None) -> list:
    """Build, verify and enter into ``out/manifest.json`` one library per resolution (a ``building.Built`` each).

    Schedules come from the job's database (default schedules where it has none).
    ``out`` defaults to artifacts/<model>-<target>.
    """
    from tunekit import building
    from tunekit.export import check_out_dir
    from tunekit.runtime import MANIFEST_KIND

    out_dir = Path(out or f"artifacts/{job.name}-{job.spec.name}")
    check_out_dir(out_dir, MANIFEST_KIND, "tunekit's artifact manifest")
    out_dir.mkdir(parents=True, exist_ok=True)
    with native_stderr_to(out_dir / "build.log"):  # TVM's C++ warnings
        return building.build(job.spec, job.keys, job.graph, job.reference(), job.open_database(), out_dir,
                              on_done=on_done, transfer=transfer)


def rerank(job: Job, top: int | None = None, runs: int | None = None, on_build: Callable | None = None,
           verify: int | None = None) -> dict:
    """Time each task's best few records inside whole runs of the model at each of the job's resolutions and
    store those times, so build takes the record fastest in the run (``tunekit.rerank``): only if the build
    of the choices wins a race of ``verify`` pairs of fresh processes against the build before (0: no race;
    None: ``rerank.DEFAULT_VERIFY``). Returns {resolution: ([``rerank.Ranked``], ``rerank.Verdict`` or None)};
    ``on_build(side, rank, ranks)`` reports each build.

    Raises
    ------
    TunekitError
        No database, or a GPU target on a machine without one.
    """
    from tunekit import rerank as rr
    from tunekit.runtime import has_cuda

    db = job.open_database()
    if db is None:
        raise TunekitError(f"no tuning database at {job.db_path} (tune something first, or pass --db)")
    if job.spec.is_gpu and not has_cuda():
        raise TunekitError(f"rerank runs the model here, and {job.spec.name} needs a GPU this machine lacks")
    reference = job.reference()
    out = {}
    try:
        with native_stderr_to(job.db_path.with_suffix(".log")):
            for key in job.keys:
                out[key.height] = rr.rerank(db, job.spec, key, job.graph(key), reference(key),
                                            top or rr.DEFAULT_TOP, runs or rr.DEFAULT_RUNS,
                                            on_build and (lambda rank, ranks, side=key.height: on_build(side, rank, ranks)),
                                            rr.DEFAULT_VERIFY if verify is None else verify)
    finally:
        db.checkpoint()
    return out


def convergence(job: Job) -> dict:
    """How tuning converged: each resolution's estimated latency against trials (``database.convergence``),
    over the tasks of the job's own preparation (its layout and Winograd choice; a database may hold others).

    Raises
    ------
    TunekitError
        No database, or it holds no record of some task of the job.
    """
    from tunekit import database, frontend

    db = job.open_database()
    if db is None:
        raise TunekitError(f"no tuning database at {job.db_path} (tune something first, or pass --db)")
    target = job.spec.tvm_target()
    tasks: dict[int, dict[int, int]] = {}
    with native_stderr_to(Path(os.devnull)):  # read-only: the task extraction's chatter goes nowhere
        for key in job.keys:
            uses: dict[int, int] = {}
            for task in frontend.tasks_of(job.graph(key), target, job.spec.conv_layout, job.spec.conv_winograd)[0]:
                wid = db.find_workload(task.mod)
                if wid is None:
                    raise TunekitError(f"{job.db_path} has no record of {job.name} at {key.height} on "
                                       f"{job.spec.name} (task {task.name}): tune it first")
                uses[wid] = uses.get(wid, 0) + task.weight
            tasks[key.height] = uses
    curve = database.convergence(job.db_path, db.target_key, db.version, tasks)
    if not curve["trials"]:
        raise TunekitError(f"{job.db_path}: some task of {job.name} has no successful record on {job.spec.name}; "
                           "tune it first")
    return curve


def bench(job: Job, backends: list[str] | None = None, artifacts: str | Path | None = None,
          threads: int | None = None, repeats: int = 10, processes: int = 3, isolation_check: bool = False,
          keep_artifacts: str | Path | None = None, command: str | None = None,
          on_progress: Callable[[str], None] | None = None) -> dict:
    """Measure the job's model at each resolution on every backend; returns the report (``bench --output X.json``).

    ``tuned`` comes from ``artifacts`` (a ``build`` output directory) or is built
    now from the job's database; ``untuned`` is built with no records. What bench
    builds goes to a scratch directory, removed unless ``keep_artifacts``.
    """
    from tunekit import benching
    from tunekit import building
    from tunekit import runtime
    from tunekit.peak import measured_peak
    from tunekit.regression import SCHEMA_VERSION
    from tunekit.targets import default_threads

    chosen = list(backends or benching.BACKENDS)
    if job.spec.is_gpu:
        raise TunekitError(f"bench compares against PyTorch on this CPU; {job.spec.name} is a GPU target "
                           "(not supported yet)")
    if artifacts and not Path(artifacts, "manifest.json").is_file():
        raise TunekitError(f"--artifacts {artifacts}: no manifest.json there; build with "
                           f"`tunekit build --out {artifacts}`")
    threads = threads or default_threads(job.spec)
    scratch = Path(keep_artifacts) if keep_artifacts else Path(tempfile.mkdtemp(prefix="tunekit-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    reference = job.reference()

    def built(key, db, out):
        file = building.artifact_name(key, job.spec)
        if not (out / file).is_file():
            out.mkdir(parents=True, exist_ok=True)
            with native_stderr_to(scratch / "build.log"):  # TVM's C++ warnings
                building.build(job.spec, [key], job.graph, reference, db, out)
        return out, file

    def tuned(key):
        if not artifacts:
            return built(key, job.open_database(), scratch / "tuned")
        file = building.artifact_name(key, job.spec)
        if not Path(artifacts, file).is_file():
            raise TunekitError(f"--artifacts {artifacts} has no {file}; build it with `tunekit build --model "
                               f"{job.name} --res {key.height} --target {job.spec.name} --out {artifacts}`")
        runtime.load(artifacts, file)  # refuse a corrupt or incompatible artifact here, in one line
        return Path(artifacts), file

    ctx = benching.BenchContext(job.spec, job.keys, job.graph, job.model, job.weights, tuned,
                                lambda key: built(key, None, scratch / "untuned"), threads, scratch / "onnx")
    protocol = benching.Protocol(repeats=repeats, processes=processes)
    try:
        peak = measured_peak(threads)
        if on_progress:
            on_progress(f"peak: {peak['gflops']:.0f} GFLOP/s ({peak['how']}; cached per host)")
        result = benching.run(ctx, chosen, protocol, isolation_check=isolation_check, peak=peak,
                              on_progress=on_progress)
    finally:
        if not keep_artifacts:
            shutil.rmtree(scratch, ignore_errors=True)
    report = {"schema_version": SCHEMA_VERSION, "model": job.name,
              "onnx_sha256": sha256(Path(job.onnx)) if job.onnx else None, "batch": job.batch,
              "resolutions": list(job.sides), "backends": chosen, "command": command,
              **benching.environment(job.spec, threads), "peak": peak,
              "protocol": {**dataclasses.asdict(protocol), "text": protocol.describe(),
                           "isolation": "one worker process per backend, each quiet before the next runs",
                           "isolation_check": isolation_check},
              "rows": result["rows"], "scaling_efficiency": benching.scaling_efficiency(result["rows"]),
              "notes": result["notes"]}
    if not result["rows"] or all(not set(r) & set(benching.BACKENDS) for r in result["rows"]):
        raise TunekitError("no backend could be measured: " + "; ".join(result["notes"]))
    return report
