"""The ``tunekit`` command line: a thin click layer over the library.

Each command parses, resolves defaults, says what it resolved, and calls one
library function. torch and tvm are imported inside command bodies so that
``tunekit --help`` answers at once.
"""

from __future__ import annotations

import json
import sys

import click

from tunekit.errors import TunekitError


class UserError(click.ClickException):
    """A TunekitError as the CLI shows it: one line, exit code 2."""

    exit_code = 2


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TunekitError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:  # an unwritable --out, a directory where a file was expected, a full disk ...
            if exc.strerror is None:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            raise UserError(f"{where}{exc.strerror}") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tunekit")
def main():
    """tunekit: resolution-specialised kernels for vision models.

    Export a model once per input resolution, tune each with TVM MetaSchedule,
    build deployable artifacts and benchmark them against PyTorch (oneDNN).

    \b
    Example:
      tunekit flops --model resnet18 --res 112..448
    """


def _model_options(f):
    f = click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False),
                     help="A user's ONNX model with dynamic H/W, instead of --model.")(f)
    f = click.option("--model", "-m", help="A zoo model (see `tunekit models`).")(f)
    return f


def _invocation() -> str:
    """The current command as a shell line, rebuilt from its parsed options (defaults left out)."""
    import shlex

    ctx = click.get_current_context()
    parts = ["tunekit", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == () or value == param.default:
            continue
        if isinstance(param, click.Argument):
            parts.append(str(value))
            continue
        flag = max(param.opts, key=len)
        for item in (value if param.multiple else [value]):
            parts += [flag] if value is True else [flag, str(item)]
    return shlex.join(parts)


RES_HELP = "Resolutions: 224, 160,224,320, 112..448 (step 56, ends at 448) or 112..448:32."


def _table(title: str, columns: list[str], rows: list[list]):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(width=max(100, len(columns) * 14)).print(table)


@main.command()
def models():
    """List the model zoo with parameters and cost at 224x224.

    \b
    Example:
      tunekit models
    """
    from tunekit.models import MODELS

    rows = [[name, spec.description, f"{spec.params / 1e6:.2f}M", f"{spec.gmacs_224:.3f}", spec.reference]
            for name, spec in MODELS.items()]
    _table("tunekit model zoo (cost at 224x224, batch 1)", ["model", "description", "params", "GMACs", "weights from"],
           rows)


@main.command()
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--weights", type=click.Path(dir_okay=False), help="A state_dict file (torchvision / timm names).")
def export(model, onnx_file, res, out, batch, weights):
    """Export one static-shape ONNX file per resolution, checked against the reference.

    Writes DIR/<model>-<H>x<W>-b<B>.onnx and DIR/manifest.json. Every file passes
    the ONNX checker and matches PyTorch (or, with --onnx, the original graph).

    \b
    Examples:
      tunekit export --model resnet50 --res 112..448 --out exports/
      tunekit export --onnx mynet.onnx --res 160,224 --out exports/
    """
    from tunekit import export as ex
    from tunekit.api import check_one_source
    from tunekit.resolutions import sides_for

    check_one_source(model, onnx_file)
    if weights and not model:
        raise UserError("--weights goes with --model (an ONNX file carries its own weights)")
    sides = sides_for(res, model)
    click.echo(f"exporting {model or onnx_file} at {', '.join(map(str, sides))} (batch {batch}) to {out}/")

    def done(r):
        click.echo(f"  {r.path.name}: ok, max |diff| vs reference {r.max_abs_diff:.2e} (tolerance {r.tolerance:.2e})")

    if model:
        ex.export_zoo(model, sides, out, batch, weights, on_done=done)
    else:
        ex.export_onnx(onnx_file, sides, out, batch, on_done=done)
    click.echo(f"wrote {out}/{ex.MANIFEST}")


@main.command()
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def flops(model, onnx_file, res, batch, as_json):
    """Compute and memory cost per resolution.

    GMACs are multiply-accumulates of conv and matmul layers (the papers' "GFLOPs");
    GFLOPs = 2 x GMACs. Peak activation memory is the largest, over all operators,
    of its non-weight inputs plus its outputs (float32).

    \b
    Examples:
      tunekit flops --model resnet18 --res 112..448
      tunekit flops --onnx mynet.onnx --res 224 --json
    """
    from tunekit import cost

    from tunekit.api import check_one_source
    from tunekit.resolutions import sides_for

    check_one_source(model, onnx_file)
    sides = sides_for(res, model)
    costs = cost.zoo_costs(model, sides, batch) if model else cost.onnx_costs(onnx_file, sides, batch)
    if as_json:
        click.echo(json.dumps({"model": model or onnx_file, "batch": batch, "rows": [c.to_json() for c in costs]},
                              indent=2))
        return
    base = costs[0]
    rows = [[f"{c.resolution}x{c.resolution}", f"{c.gmacs:.3f}", f"{c.gflops:.3f}", f"{c.macs / base.macs:.2f}x",
             f"{c.params / 1e6:.2f}M", f"{c.peak_activation_bytes / 2**20:.2f}"] for c in costs]
    _table(f"cost of {model or onnx_file}, batch {batch}",
           ["resolution", "GMACs", "GFLOPs", f"vs {base.resolution}", "params", "peak act. MiB"], rows)


# ------------------------------------------------------------------ targets
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def targets(as_json):
    """List target presets (targets/*.json) and the detected host.

    Any command's --target also takes a preset file (NAME.json) or a raw TVM
    target dict as JSON. $TUNEKIT_TARGETS names a directory of your own preset
    files, listed beside the bundled ones (the same name overrides).

    \b
    Examples:
      tunekit targets
      tunekit tune --model resnet18 --res 224 --target '{"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 8}'
    """
    from tunekit.targets import presets, resolve_target, user_dir

    extra = user_dir()
    if extra is not None and not extra.is_dir():
        click.echo(f"warning: TUNEKIT_TARGETS={extra} is not a directory; listing the bundled presets", err=True)
    names = list(presets())
    specs = [resolve_target(name) for name in names + (["host"] if "host" not in names else [])]
    if as_json:
        click.echo(json.dumps([s.to_json() for s in specs], indent=2))
        return
    rows = [[s.name, s.description, json.dumps(s.tvm), s.threads or "-",
             f"{s.peak_gflops:,.0f}" if s.peak_gflops else "?"] for s in specs]
    _table("targets", ["name", "machine", "TVM target", "threads", "peak GFLOP/s"], rows)


# --------------------------------------------------------------------- tune
def _parse_rpc(rpc: str | None, key: str | None):
    if rpc is None:
        if key:
            raise UserError("--rpc-key needs --rpc HOST:PORT")
        return None
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--rpc {rpc!r}: expected HOST:PORT of a TVM RPC tracker, e.g. 127.0.0.1:9190")
    if not key:
        raise UserError("--rpc needs --rpc-key KEY (the key the device's rpc_server registered with)")
    return host, int(port), key


class _Reporter:
    """Tuning progress: a live bar on a terminal, one plain line per batch otherwise (CI logs)."""

    def __init__(self, total: int):
        self.total = total
        self.live = sys.stdout.isatty()
        self.bar = None
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("trials"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                transient=False)
            self.bar_id = self.bar.add_task("planning", total=max(total, 1))
            self.bar.start()

    def __call__(self, p):
        resolutions = ",".join(str(r) for r, _ in p.task.uses)
        if p.note:
            line = f"  task {p.task_index + 1}/{p.task_count} {p.task.name} @{resolutions} {p.note}"
            if self.live:
                self.bar.console.print(line)
            else:
                click.echo(line)
        best = f"best {p.best_ms * 1e3:.2f} us" if p.best_ms is not None else "best -"
        from tunekit.tuning import NOISY

        text = (f"task {p.task_index + 1}/{p.task_count} {p.task.name} @{resolutions}  {best}"
                + (f"  {p.failed} failed" if p.failed else "")
                + (f"  noisy: repeats differ by {p.noise:.0%}" if p.noise is not None and p.noise > NOISY else ""))
        self.total = p.trials_total  # seeding past a small budget adds measurements to the plan
        if self.live:
            self.bar.update(self.bar_id, completed=p.trials_done, total=max(self.total, 1), description=text)
        elif p.best_ms is not None:
            rate = p.trials_done / p.elapsed if p.elapsed else 0
            eta = (self.total - p.trials_done) / rate if rate else 0
            click.echo(f"  {text}  trials {p.trials_done}/{self.total}  {p.elapsed:.0f}s elapsed, ETA {eta:.0f}s")
            sys.stdout.flush()  # a log file being followed (tail -f) sees every batch

    def close(self):
        if self.bar:
            self.bar.stop()


@main.command()
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="Preset (tunekit targets), a targets/*.json file, or a TVM target dict as JSON.")
@click.option("--trials", type=click.IntRange(1), help="Total trial budget, split evenly over the unique tasks.")
@click.option("--trials-per-task", type=click.IntRange(1),
              help="Trials for every task (default 64 when --trials is not given).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--weights", type=click.Path(dir_okay=False), help="A state_dict file (zoo models).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="Tuning database [default: $TUNEKIT_DB or tuning_logs/tunekit.db].")
@click.option("--rpc", help="HOST:PORT of a TVM RPC tracker: measure on the devices registered there.")
@click.option("--rpc-key", help="Device key registered with the tracker (with --rpc).")
@click.option("--seed", default=0, show_default=True, type=int, help="Search seed.")
@click.option("--anchor", help="Resolution(s) to tune first with the full budget (comma-separated) "
                               "[default: 224 if swept, else the middle one].")
@click.option("--no-transfer", is_flag=True,
              help="Tune every resolution independently: no schedules adapted from other resolutions, "
                   "the same budget for every task.")
@click.option("--cache-flush", is_flag=True,
              help="Time each candidate's single calls after flushing its weights and output from the CPU caches, "
                   "as a layer finds them in a whole run of a model too big for the cache. Its times do not "
                   "compare with warm ones (source 'cold'): tune into a database of its own, export it, "
                   "`tunekit db import --cold` it into the main one and `tunekit db rerank` there.")
@click.option("--only-new", is_flag=True,
              help="Tune only the tasks the database has no record of (new since an update changed how models are "
                   "prepared, or missing from an imported reference set); the others are left as they are.")
@click.option("--dry-run", is_flag=True, help="Plan (tasks, budget, what is already done) and stop.")
def tune(model, onnx_file, res, target, trials, trials_per_task, batch, weights, db_path, rpc, rpc_key, seed,
         anchor, no_transfer, cache_flush, only_new, dry_run):
    """Tune every task of a model at each resolution with MetaSchedule.

    Records land in the database as they are measured. Running the same command
    again resumes: tasks that used their budget are skipped, the rest continue.
    Ctrl-C stops cleanly and prints the command that resumes. Records of another
    CPU class of the same vector ISA (a reference set from `tunekit db import`)
    seed each task, measured here, before the search.

    \b
    Examples:
      tunekit tune --model resnet50 --res 112..448 --target host
      tunekit tune --model resnet18 --res 112..448 --anchor 224 --trials 3000
      tunekit tune --model resnet18 --res 224 --trials 2000 --db logs/r18.db
      tunekit tune --model resnet50 --res 392 --trials-per-task 32 --only-new --db tuning_logs/reference-znver5-2c.db
      tunekit tune --model resnet18 --res 224 --target i7-4790k --rpc 127.0.0.1:9190 --rpc-key i7-4790k
    """
    import shlex

    from tunekit import api, database
    from tunekit.resolutions import sides_for

    job = api.Job(model, onnx_file, res, batch, weights, target, db_path)
    rpc_addr = _parse_rpc(rpc, rpc_key)
    click.echo(f"tuning {model or onnx_file} at {', '.join(map(str, job.sides))} (batch {batch}) for "
               f"{job.spec.name}: {json.dumps(job.spec.tvm)}")
    click.echo(f"database {job.db_path}; TVM's own log {job.db_path.with_suffix('.log')}")
    anchors = sides_for(anchor, model) if anchor else None
    plan = api.plan(job, trials, trials_per_task, not no_transfer, anchors, rpc_addr, only_new)
    _print_plan(plan, len(job.sides))
    if dry_run:
        return
    reporter = _Reporter(plan.new)
    try:
        result = api.tune(job, transfer=not no_transfer, rpc=rpc_addr, seed=seed, the_plan=plan,
                          on_progress=reporter, cache_flush=cache_flush)
    finally:
        reporter.close()
    rate = result.trials_run / result.seconds if result.seconds else 0.0
    click.echo(f"{result.trials_run} trials in {result.seconds:.0f}s ({rate:.2f} trials/s), "
               f"{result.failed} failed candidates (kept as data: tunekit db stats)")
    if result.interrupted:
        click.echo("interrupted: every measured trial is kept. Resume with:", err=True)
        click.echo("  " + shlex.join(["tunekit", *sys.argv[1:]]), err=True)
        sys.exit(130)
    _print_summary(job.db_path, job.name, job.sides, batch,
                   database.short_target(database.target_key(job.spec.tvm_target())),
                   {t.wid for t in plan.tasks})


def _print_plan(plan, resolutions: int) -> None:
    searchable = [t for t in plan.tasks if t.searchable]
    lifted = sum(len(v) for v in plan.weight_only.values())
    click.echo(f"{sum(plan.per_resolution.values())} tasks over {resolutions} resolution(s) -> {len(plan.tasks)} "
               f"unique ({len(searchable)} to search, {len(plan.tasks) - len(searchable)} with one schedule); "
               f"{lifted} weight-only tasks run once at build, not tuned")
    done = [t for t in plan.tasks if t.remaining == 0]
    budgets = sorted({t.budget for t in searchable}, reverse=True)
    if plan.anchors:
        at_anchor = [t for t in searchable if any(r in plan.anchors for r, _ in t.uses)]
        click.echo(f"transfer: anchor {','.join(map(str, plan.anchors))} first, {len(at_anchor)} tasks x "
                   f"{budgets[0]} trials; the other {len(searchable) - len(at_anchor)} tasks x {budgets[-1]} trials, "
                   "seeded with schedules adapted from the nearest tuned resolution (--no-transfer to turn off)")
    click.echo(f"budget {budgets[0] if budgets else 0} trials per task"
               + (f" ({budgets[-1]} away from the anchor)" if len(budgets) > 1 else "")
               + f": {plan.reused} trials reused from the database, {plan.new} new; "
               f"{len(done)}/{len(plan.tasks)} tasks already done")


# -------------------------------------------------------------------- build
@main.command()
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="Preset (tunekit targets), a targets/*.json file, or a TVM target dict as JSON.")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Output directory [default: artifacts/<model>-<target>].")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--weights", type=click.Path(dir_okay=False), help="A state_dict file (zoo models).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="Tuning database [default: $TUNEKIT_DB or tuning_logs/tunekit.db].")
@click.option("--no-transfer", is_flag=True,
              help="Tasks with no record get default schedules, not schedules adapted from other resolutions.")
def build(model, onnx_file, res, target, out, batch, weights, db_path, no_transfer):
    """Build one verified library per resolution from the tuning database.

    Every task takes its best tuned schedule. A task with no record takes the
    best schedule of the same task at the nearest tuned resolution, adapted to
    the new shapes (counted as transferred; --no-transfer to skip), else a
    default schedule (counted as a fallback). Weights are transformed to
    the tuned layouts once, here, so the library's entry point takes only the
    image. Each library is run on a random input and compared with PyTorch (or
    the ONNX graph) before it is written; OUT/manifest.json describes them all.
    Load them with tunekit.load(DIR) or tunekit.load_bundle(DIR).

    \b
    Examples:
      tunekit build --model resnet18 --res 112..448 --target host --out artifacts/r18
      tunekit build --model resnet18 --res 224 --target cuda-sm90 --out artifacts/r18-h200
    """
    from tunekit import api

    job = api.Job(model, onnx_file, res, batch, weights, target, db_path)
    has_db = job.db_path.is_file()
    click.echo(f"building {model or onnx_file} at {', '.join(map(str, job.sides))} (batch {batch}) for "
               f"{job.spec.name}: {json.dumps(job.spec.tvm)}")
    click.echo(f"schedules from {job.db_path}" if has_db else
               f"no tuning database at {job.db_path}: every task gets a default schedule")

    def done(b):
        h, w = b.key.height, b.key.width
        check = (f"max |err| {b.max_abs_err:.2g} <= {b.tolerance:.2g}, load {b.load_ms:.0f} ms, "
                 f"{b.latency['median_ms']:.2f} ms (p90 {b.latency['p90_ms']:.2f}) on {b.latency['threads']} threads"
                 if b.max_abs_err is not None else b.verification)
        click.echo(f"  {h}x{w}: {len(b.tuned)} tuned, {len(b.transferred)} transferred, {len(b.fallback)} fallback; "
                   f"compiled in {b.compile_s:.1f}s; {check} -> {b.path}")

    built = api.build(job, out, transfer=not no_transfer, on_done=done)
    click.echo(f"manifest: {built[0].path.parent / 'manifest.json'}")


# -------------------------------------------------------------------- bench
@main.command()
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="The CPU target the artifacts are built for (it must run on this machine).")
@click.option("--artifacts", type=click.Path(file_okay=False),
              help="Built artifacts to measure as 'tuned' [default: build them now from the database].")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="Tuning database, when building [default: $TUNEKIT_DB or tuning_logs/tunekit.db].")
@click.option("--threads", type=click.IntRange(1), help="Threads for every backend [default: the target's].")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--backends", help="Comma-separated subset of tuned,onednn,untuned,onnxruntime,openvino "
              "[default: all].")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(3),
              help="Repeats per backend in each process.")
@click.option("--processes", default=3, show_default=True, type=click.IntRange(1),
              help="Fresh worker processes per backend (one process is one sample of the process lottery).")
@click.option("--isolation-check", is_flag=True,
              help="Also time every backend alone and report how far its race figure is from the solo one.")
@click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json"]), default="table",
              show_default=True, help="What to print.")
@click.option("--output", "outputs", multiple=True, type=click.Path(dir_okay=False),
              help="Also write the report to FILE (.json, .md or .csv by extension); repeatable.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw latency and GFLOP/s to a PNG.")
@click.option("--weights", type=click.Path(dir_okay=False), help="A state_dict file (zoo models).")
@click.option("--keep-artifacts", type=click.Path(file_okay=False),
              help="Keep what bench builds (libraries, ONNX files, build log) in DIR [default: removed].")
def bench(model, onnx_file, res, target, artifacts, db_path, threads, batch, backends, repeats, processes,
          isolation_check, fmt, outputs, plot_path, weights, keep_artifacts):
    """Measure tuned TVM against the libraries per resolution (Table II, Fig. 7).

    Side by side in one run, same input, same threads: the tuned artifact,
    TVM with no tuning records, PyTorch eager on oneDNN (the faster of NCHW and
    channels_last, reported), ONNX Runtime and OpenVINO (when installed). Each
    backend runs in a worker process of its own and only once the previous
    backend's threads have gone quiet; the sweep is repeated in --processes
    fresh processes. Prints latency (median, p10-p90), speedups, images/s,
    GFLOP/s, % of the measured peak, the spread across processes and the
    scaling efficiency across resolutions.

    \b
    Examples:
      tunekit bench --model resnet18 --res 112..448 --target host
      tunekit bench --model resnet18 --res 224 --artifacts artifacts/r18 --output r18.json --plot r18.png
      tunekit bench --model resnet18 --res 112 --backends untuned,onednn --isolation-check
    """
    from pathlib import Path

    from tunekit import api
    from tunekit import benching

    chosen = benching.parse_backends(backends)
    for out in outputs:
        if Path(out).suffix not in (".json", ".md", ".csv"):
            raise UserError(f"--output {out}: name a .json, .md or .csv file")
    job = api.Job(model, onnx_file, res, batch, weights, target, db_path)
    protocol = benching.Protocol(repeats=repeats, processes=processes)
    click.echo(f"bench {job.name} at {', '.join(map(str, job.sides))} (batch {batch}) on {job.spec.name}, "
               f"backends {', '.join(chosen)}\nprotocol: {protocol.describe()}", err=True)
    report = api.bench(job, chosen, artifacts, threads, repeats, processes, isolation_check, keep_artifacts,
                       _invocation(), on_progress=lambda text: click.echo(f"  {text}", err=True))
    for out in outputs:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(benching.render(report, Path(out).suffix[1:]))
    if plot_path:
        from tunekit import plots

        plots.bench(report, plot_path)
    if fmt != "table":
        click.echo(benching.render(report, fmt), nl=False)
        return
    for title, header, rows in benching.tables(report):
        _table(f"{job.name} on {job.spec.name}, {report['threads']} threads: {title}", header, rows)
    for k, v in report["scaling_efficiency"].items():
        click.echo(f"scaling efficiency {k}: {v:.2f}")
    for note in report["notes"]:
        click.echo(f"note: {note}")


@main.command()
@click.argument("base", type=click.Path(exists=True, dir_okay=False))
@click.argument("new", type=click.Path(exists=True, dir_okay=False))
@click.option("--max-regression", default="5%", show_default=True,
              help="Largest slowdown tolerated: 5% or 0.05 (a bare 5 is refused as ambiguous).")
@click.option("--relative-to", type=click.Choice(["onednn", "onnxruntime", "openvino", "untuned"]),
              help="Compare each backend's time divided by this backend's, measured in the same run "
                   "(machine-independent; the recommended CI mode).")
@click.option("--backends", help="Comma-separated backends to compare [default: tuned].")
def compare(base, new, max_regression, relative_to, backends):
    """Compare two `bench --output X.json` reports: the CI regression gate.

    A change is a REGRESSION when it exceeds --max-regression and its 95%
    confidence interval (a bootstrap over worker processes, then samples, from
    the raw samples in the reports) lies wholly above zero. The reports must
    measure the same model, batch, threads and ISA; other differences (CPU
    name, library versions) are warned about.

    \b
    Exit codes: 0 no regression, 1 regression, 2 unusable input (a malformed
    report, reports of different experiments, a bad option).

    \b
    Examples:
      tunekit compare base.json new.json --relative-to onnxruntime --max-regression 10%
      tunekit compare benchmarks/ci/baseline-rocketlake-2c.json new.json --max-regression 7% --backends tuned
    """
    from tunekit import benching
    from tunekit import regression

    try:
        threshold = regression.parse_threshold(max_regression)
    except ValueError as exc:
        raise UserError(f"--max-regression {exc}") from None
    reports = [regression.load(base), regression.load(new)]
    mismatch = regression.identity_mismatch(*reports)
    if mismatch:
        raise UserError(mismatch)
    for warning in regression.identity_warnings(*reports):
        click.echo(f"warning: {warning}", err=True)
    chosen = benching.parse_backends(backends) if backends else ["tuned"]
    changes = regression.compare(reports[0], reports[1], threshold, chosen, relative_to)
    if not changes:
        raise UserError("the two reports share no resolution and backend to compare"
                        + (f" (with {relative_to} in both)" if relative_to else ""))
    unit = f"x {relative_to}" if relative_to else "ms"
    _table(f"{new} against {base} (threshold {threshold:.1%}, 95% interval)",
           ["res", "backend", f"base {unit}", f"new {unit}", "change", "interval", "verdict"],
           [[c.resolution, c.backend, f"{c.base:.3f}", f"{c.new:.3f}", f"{c.change:+.1%}",
             f"{c.low:+.1%} .. {c.high:+.1%}", c.verdict] for c in changes])
    if any(c.regressed for c in changes):
        click.echo(f"regression: slower by more than {threshold:.1%}, beyond the measured noise", err=True)
        sys.exit(1)


@main.command("plan")
@click.option("--report", "report_path", type=click.Path(exists=True, dir_okay=False),
              help="A `tunekit bench --output X.json` report.")
@click.option("--accuracy", "accuracy_path", type=click.Path(exists=True, dir_okay=False),
              help="A `tunekit evaluate --output X.json` report: the most accurate resolution or policy that fits.")
@click.option("--budget-ms", required=True, type=click.FloatRange(min=0, min_open=True),
              help="Latency budget per image, in ms.")
def plan_budget(report_path, accuracy_path, budget_ms):
    """What fits a latency budget: per backend from a bench report, per resolution or policy from an evaluate report.

    With --report, the highest resolution each backend runs within the budget (the
    medians measured side by side in one bench run, so the backends are compared on
    the same machine at the same time). With --accuracy, the most accurate fixed
    resolution or routing policy whose mean latency (as evaluate measured it) fits.

    \b
    Examples:
      tunekit plan --report benchmarks/resnet18-rocketlake-2c.json --budget-ms 20
      tunekit plan --accuracy eval.json --budget-ms 5
    """
    if not (report_path or accuracy_path):
        raise UserError("give --report BENCH.json, --accuracy EVALUATE.json, or both")
    if report_path:
        _plan_backends(report_path, budget_ms)
    if accuracy_path:
        _plan_accuracy(accuracy_path, budget_ms)


def _plan_backends(report_path, budget_ms):
    from tunekit import benching, regression

    report = regression.load(report_path)
    fits = benching.fits_budget(report, budget_ms)
    fastest = {b: min(r[b]["median_ms"] for r in report["rows"] if b in r) for b in fits}
    _table(f"{report['model']} within {budget_ms:g} ms ({report['machine']['mcpu']}, {report['threads']} threads)",
           ["backend", "highest resolution that fits", "its median ms"],
           [[b, f"{fit[0]}x{fit[0]}", f"{fit[1]:.2f}"] if fit else [b, f"none (fastest {fastest[b]:.2f} ms)", "-"]
            for b, fit in fits.items()])
    fits = {b: fit[0] if fit else None for b, fit in fits.items()}
    if fits.get("tuned") and "onednn" in fits:
        tuned, onednn = fits["tuned"], fits["onednn"] or 0
        verdict = "holds" if tuned > onednn else "does not hold"
        click.echo(f"tuned fits {tuned} where oneDNN fits {onednn or 'nothing'}: the paper's headline {verdict} "
                   "on this host at this budget")


def _plan_accuracy(accuracy_path, budget_ms):
    from tunekit import evaluate as evaluating

    report = evaluating.load_report(accuracy_path)
    choices = evaluating.choices(report)
    fitting = [c for c in choices if c["mean_ms"] <= budget_ms]
    _table(f"{report['model']} on {report['data']}: within {budget_ms:g} ms (mean latency from evaluate)",
           ["resolution / policy", "top-1", "mean ms", "fits"],
           [[c["name"], f"{c['accuracy']:.1%}", f"{c['mean_ms']:.2f}", "yes" if c in fitting else "no"]
            for c in choices])
    if not fitting:
        fastest = min(choices, key=lambda c: c["mean_ms"])
        raise UserError(f"nothing in {accuracy_path} fits {budget_ms:g} ms: the fastest, {fastest['name']}, "
                        f"takes {fastest['mean_ms']:.2f} ms")
    best = max(fitting, key=lambda c: (c["accuracy"], -c["mean_ms"]))
    click.echo(f"most accurate within {budget_ms:g} ms: {best['name']} ({best['accuracy']:.1%} top-1, "
               f"{best['mean_ms']:.2f} ms mean)")


@main.command("evaluate")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A `tunekit build --out` directory.")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="A folder with one subfolder of PNG/JPEG images per class (classes in sorted name order).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line in the model's output order (default: sorted subfolder names).")
@click.option("--policy", "policies", multiple=True,
              help="nearest, budget:MS, cascade:T or scale:PATH (an ONNX scale model); repeatable.")
@click.option("--model", help="The bundle's model, when the directory holds several.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "md"]), default="table", show_default=True)
@click.option("--output", "outputs", multiple=True, type=click.Path(dir_okay=False),
              help="Also write the report: X.json or X.md; repeatable.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Accuracy against latency: X.png.")
def evaluate_cmd(bundle_dir, data, labels, policies, model, fmt, outputs, plot):
    """Accuracy and latency of a bundle on labelled images: per resolution, per policy, and the oracle.

    The oracle runs each image at the smallest resolution where it is right: the
    ceiling any routing policy can reach. Latencies are wall times of bundle.run
    (resize and crop included), one image at a time.

    \b
    Example:
      tunekit evaluate --bundle artifacts/r18 --data val/ --policy budget:10 --policy cascade:0.8 --plot eval.png
    """
    from pathlib import Path

    from tunekit import evaluate as evaluating

    parsed = [evaluating.Policy.parse(p) for p in policies]
    for output in outputs:
        if Path(output).suffix not in (".json", ".md"):
            raise UserError(f"--output {output}: name a .json or .md file")
    if plot and Path(plot).suffix != ".png":
        raise UserError(f"--plot {plot}: name a .png file")
    folder = evaluating.read_folder(data, labels)
    items = folder[1]
    with click.progressbar(length=len(items), label="images", file=sys.stderr) as bar:
        report = evaluating.evaluate(bundle_dir, data, parsed, model, on_image=lambda: bar.update(1), folder=folder)
    header = ["resolution / policy", "top-1", "mean ms", "p90 ms", "ran at"]
    host = f"LLVM mcpu {report['machine']['mcpu']}, {report['threads']} threads"
    md = "\n".join([f"# {report['model']} on {data} ({host})", "", "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in evaluating.rows(report)])
    text = {"json": json.dumps(report, indent=2), "md": md}
    for output in outputs:
        Path(output).write_text(text[Path(output).suffix[1:]] + "\n")
    if plot:
        from tunekit import plots

        plots.evaluation(report, plot)
    if fmt == "table":
        _table(f"{report['model']}: {len(items)} images, {len(report['classes'])} classes ({host})", header,
               evaluating.rows(report))
    else:
        click.echo(text[fmt])


@main.group("scale-model")
def scale_model():
    """Scale models for dynamic resolution (load_bundle(..., policy="scale")).

    \b
    Example:
      tunekit scale-model train --bundle artifacts/r18 --data train/ --out scale.onnx
    """


@scale_model.command("train")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A `tunekit build --out` directory: the backbone and resolutions to choose between.")
@click.option("--data", required=True, type=click.Path(file_okay=False),
              help="A folder with one subfolder of PNG/JPEG images per class (as for evaluate).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the scale model (.onnx).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line in the model's output order (default: sorted subfolder names).")
@click.option("--side", type=click.IntRange(min=8), help="The scale model's input side [default: the bundle's smallest].")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--width", default=16, show_default=True, type=click.IntRange(min=4),
              help="Channels of the first layer (the network doubles them twice).")
@click.option("--val-fraction", default=0.2, show_default=True, type=float,
              help="Share of the images held out to report how well the labels generalise.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--model", help="The bundle's model, when the directory holds several.")
def scale_model_train(bundle_dir, data, out, labels, side, epochs, width, val_fraction, seed, model):
    """Train a scale model: per image, the smallest bundle resolution at which the backbone is right.

    Runs every image through the bundle at each resolution (the oracle's labels),
    trains a small MobileNetV2-style network on the images at --side px with
    PyTorch, and writes it as ONNX with the bundle's resolutions in its metadata.
    Measure it with `tunekit evaluate --policy scale:OUT` on images it was not
    trained on.

    \b
    Example:
      tunekit scale-model train --bundle artifacts/r18 --data train/ --out scale.onnx --epochs 30
      tunekit evaluate --bundle artifacts/r18 --data val/ --policy scale:scale.onnx
    """
    from tunekit import evaluate as evaluating
    from tunekit import scale_training

    folder = evaluating.read_folder(data, labels)
    with click.progressbar(length=len(folder[1]), label="oracle labels", file=sys.stderr) as bar:
        def on_epoch(epoch, loss, routed):
            if epoch == 1:
                bar.render_finish()
            held = f", held-out routing {routed['accuracy']:.1%} at {routed['mean_ms']:.2f} ms" if routed else ""
            click.echo(f"epoch {epoch}/{epochs}: loss {loss:.4f}{held}", err=True)

        trained = scale_training.train(bundle_dir, data, out, side, epochs, width, val_fraction, seed, model,
                                       labels, on_image=lambda: bar.update(1), on_epoch=on_epoch, folder=folder)
    click.echo("labels (smallest resolution the backbone gets right): "
               + ", ".join(f"{k}: {v}" for k, v in trained.label_counts.items()))
    if trained.routed:
        largest = "x".join(map(str, trained.resolutions[-1]))
        _table(f"on {trained.held_out} held-out images (backbone time; the scale model's own is not counted here)",
               ["routing", "top-1", "backbone mean ms"],
               [[f"scale model (epoch {trained.epoch} kept)", f"{trained.routed['accuracy']:.1%}",
                 f"{trained.routed['mean_ms']:.2f}"],
                [f"always {largest}", f"{trained.largest['accuracy']:.1%}", f"{trained.largest['mean_ms']:.2f}"],
                ["oracle", f"{trained.oracle['accuracy']:.1%}", f"{trained.oracle['mean_ms']:.2f}"]])
    click.echo(f"scale model ({trained.side}x{trained.side} input) -> {trained.path}")


def _print_summary(path, model, sides, batch, target_label, workloads: set[int]):
    from tunekit import database

    rows = [r for r in database.tuned_summary(path, workloads)
            if r["model"] == model and r["resolution"] in sides and r["batch"] == batch
            and r["target"] == target_label and r["tvm_version"] == database.tvm_version()]
    _table("tuned (estimated latency = sum of best kernel times)",
           ["resolution", "tasks tuned", "trials", "est. latency ms"],
           [[f"{r['resolution']}x{r['resolution']}", f"{r['tuned_tasks']}/{r['tasks']}", r["trials"],
             f"{r['est_ms']:.3f}" if r["est_ms"] is not None else "-"] for r in rows])


# ----------------------------------------------------------------------- db
@main.group()
def db():
    """Inspect and move the tuning database.

    \b
    Example:
      tunekit db list
    """


def _db_option(f):
    return click.option("--db", "db_path", type=click.Path(dir_okay=False),
                        help="Tuning database [default: $TUNEKIT_DB or tuning_logs/tunekit.db].")(f)


def _existing_db(db_path):
    from tunekit import database

    path = database.resolve_path(db_path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a tunekit database")
    if not path.is_file():
        raise UserError(f"no tuning database at {path} (tune something first, or pass --db)")
    return path


@db.command("list")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def db_list(db_path, as_json):
    """What is tuned: model x resolution x target, trials, estimated latency.

    \b
    Example:
      tunekit db list --db tuning_logs/tunekit.db
    """
    from tunekit import database

    rows = database.tuned_summary(_existing_db(db_path))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(f"tuned in {database.resolve_path(db_path)}",
           ["model", "res", "batch", "target", "TVM", "tasks tuned", "trials", "from transfer", "est. ms"],
           [[r["model"], r["resolution"], r["batch"], r["target"], r["tvm_version"],
             f"{r['tuned_tasks']}/{r['tasks']}", r["trials"], r["transferred"],
             f"{r['est_ms']:.3f}" if r["est_ms"] is not None else "-"] for r in rows])
    unassigned = database.unassigned_workloads(_existing_db(db_path))
    if unassigned:
        click.echo(f"{unassigned} workload(s) have records but no model yet (imported): they apply, and show here,"
                   " once `tunekit tune` or `tunekit build` runs a model that uses them")


@db.command("stats")
@_db_option
def db_stats(db_path):
    """Counts of workloads, records and failures; the commonest failure messages.

    \b
    Example:
      tunekit db stats
    """
    from tunekit import database

    s = database.stats(_existing_db(db_path))
    click.echo(f"{s['path']}: {s['size_mb']} MB, {s['workloads']} workloads, {s['records']} records "
               f"({s['failed_records']} failed)")
    click.echo("by source: " + ", ".join(f"{k} {v}" for k, v in s["by_source"].items()))
    for line in s["targets"]:
        click.echo(f"  {line}")
    if s["top_failures"]:
        click.echo("commonest failures:")
        for line in s["top_failures"]:
            click.echo(f"  {line}")


@db.command("export")
@_db_option
@click.option("--format", "fmt", type=click.Choice(["tvm-json"]), default="tvm-json", show_default=True)
@click.option("--target", "-t", help="Only records for this target (recommended: stock TVM applies any record).")
@click.argument("out_dir", type=click.Path(file_okay=False))
def db_export(db_path, fmt, target, out_dir):
    """Write the records in TVM's own JSONDatabase layout, for stock TVM.

    \b
    Example:
      tunekit db export --format tvm-json --target host exported/
      # then, in TVM: ms.database.JSONDatabase(work_dir="exported/")
    """
    from tunekit import database
    from tunekit.targets import resolve_target

    path = _existing_db(db_path)
    key = database.target_key(resolve_target(target).tvm_target()) if target else None
    workloads, records = database.export_tvm_json(path, out_dir, key)
    click.echo(f"wrote {records} records of {workloads} workloads to {out_dir}/ (TVM {database.tvm_version()})")


@db.command("import")
@_db_option
@click.argument("in_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--cold", is_flag=True,
              help="The records were timed with cold caches (tune --cache-flush): mark them so (source 'cold'); "
                   "`tunekit db rerank` then times each task's fastest of them in the run.")
def db_import(db_path, in_dir, cold):
    """Add the records of a TVM JSONDatabase directory to the tunekit database.

    \b
    Example:
      tunekit db import exported/
      tunekit db import --cold flushed/
    """
    from tunekit import database

    added, present = database.import_tvm_json(database.resolve_path(db_path), in_dir, cold=cold)
    click.echo(f"imported {added} records from {in_dir}/" + (f" ({present} were there already)" if present else ""))


@db.command("curve")
@_model_options
@click.option("--res", "res", required=True, help=RES_HELP)
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="Preset (tunekit targets), a targets/*.json file, or a TVM target dict as JSON.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@_db_option
@click.option("--points", default=8, show_default=True, type=click.IntRange(2, 100),
              help="Rows of the table: trials at which the estimate is shown.")
@click.option("--json", "as_json", is_flag=True, help="Print every point as JSON instead of a table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw the curves to a PNG.")
def db_curve(model, onnx_file, res, target, batch, db_path, points, as_json, plot_path):
    """How tuning converged: estimated latency against trials, per resolution.

    Replays the database's records in the order they were measured. After each
    trial a resolution's estimate is the sum of its tasks' best kernel times so
    far (a task not reached yet counts at its default schedule's time), so the
    curve starts at the untuned estimate and ends at what `db list` shows.

    \b
    Example:
      tunekit db curve --model resnet18 --res 112,224,448 --plot curve.png
    """
    from tunekit import api

    job = api.Job(model, onnx_file, res, batch, None, target, db_path)
    curve = api.convergence(job)
    if plot_path:
        from tunekit import plots

        plots.convergence(curve, f"{job.name} on {job.spec.name} ({json.dumps(job.spec.tvm)})", plot_path)
    if as_json:
        click.echo(json.dumps(curve))
        return
    n = len(curve["trials"])
    picks = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    _table(f"estimated latency (ms, sum of best kernel times) against the {n} trials of these tasks "
           "(s: since the first; other tasks tuned in between count in it)",
           ["trials", "s", *(f"{r}x{r}" for r in curve["est_ms"])],
           [[curve["trials"][i], f"{curve['seconds'][i]:.0f}", *(f"{v[i]:.3f}" for v in curve["est_ms"].values())]
            for i in picks])
    if plot_path:
        click.echo(f"plot: {plot_path}")


@db.command("prune")
@_db_option
@click.option("--top-k", required=True, type=click.IntRange(1), help="Records to keep per task and target.")
def db_prune(db_path, top_k):
    """Keep only the best K records of every task; pruned trials still count as done.

    \b
    Example:
      tunekit db prune --top-k 8
    """
    from tunekit import database

    path = _existing_db(db_path)
    before = path.stat().st_size
    deleted = database.prune(path, top_k)
    click.echo(f"deleted {deleted} records; {before / 2**20:.2f} MB -> {path.stat().st_size / 2**20:.2f} MB")


@db.command("remeasure")
@_db_option
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="Whose records to measure again (preset, targets/*.json or a TVM target dict); measured here.")
@click.option("--top", default=4, show_default=True, type=click.IntRange(2),
              help="Records measured again per workload, the best by their stored times.")
def db_remeasure(db_path, target, top):
    """Measure the best records of every workload again, in one sitting.

    A record keeps the time of the moment it was measured, and a VM's speed
    drifts within the hour, so records merged from two databases do not
    compare: prune would keep whichever was measured on the faster day. Every
    workload with two or more records has its --top best rebuilt and run back
    to back here; their new times replace the old. Prune each set first.

    \b
    Example:
      tunekit db prune --db a.db --top-k 1 && tunekit db import --db a.db b-export/
      tunekit db remeasure --db a.db && tunekit db prune --db a.db --top-k 1
    """
    from tunekit import database, tuning
    from tunekit.targets import resolve_target

    path = _existing_db(db_path)
    spec = resolve_target(target)
    db = database.open_database(path, spec.tvm_target())
    count = tuning.remeasure_database(db, spec, top, lambda i, n, note: click.echo(f"  {i + 1}/{n} {note}"))
    click.echo(f"re-measured {count} workload(s) with two or more records on {spec.name}")



@db.command("rerank")
@_model_options
@click.option("--res", required=True, help="Resolutions: 224, 160,224 or 112..448.")
@click.option("--target", "-t", "target", default="host", show_default=True,
              help="Preset, a targets/*.json file or a TVM target dict; timed here, so the host's.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="A state_dict file (zoo models).")
@_db_option
@click.option("--top", default=4, show_default=True, type=click.IntRange(2),
              help="Candidates per task: the best so far, its default schedule, its fastest timed with cold caches "
                   "(db import --cold), then the fastest measured alone.")
@click.option("--runs", default=20, show_default=True, type=click.IntRange(4), help="Timed runs of each build.")
@click.option("--verify", default=6, show_default=True, type=click.IntRange(0),
              help="Pairs of fresh processes racing the build of the choices against the build before; the times "
                   "are stored only if the choices win (0: store them unchecked). Per-task times in the run do "
                   "not add up: a build of every task's fastest there can be no faster.")
def db_rerank(model, onnx_file, res, target, batch, weights, db_path, top, runs, verify):
    """Rank each task's best records by their time inside a whole run of the model.

    Tuning times a kernel alone, its weights warm in cache; in a whole run a
    layer finds its weights cold, and the kernel fastest alone is often not the
    fastest there. This builds the model once per candidate rank (every task's
    i-th best record), verifies each build, times every call of every build in
    turn, builds every task's choice and races that build against the build
    before in fresh processes; if the choices win it stores the times: from
    then on build, prune and export take the record fastest in the run. Run it
    after tune, before prune.

    \b
    Example:
      tunekit db rerank --model resnet50 --res 112,168 --db tuning_logs/r50.db
      tunekit db prune --db tuning_logs/r50.db --top-k 1
    """
    from tunekit import api

    job = api.Job(model, onnx_file, res, batch, weights, target, _existing_db(db_path))
    click.echo(f"timing up to {top} candidates a task inside whole runs of {job.name} on {job.spec.name}")
    ranked = api.rerank(job, top, runs, lambda side, rank, ranks: click.echo(
        f"  {side}: build {rank + 1}/{ranks}" if rank < ranks else f"  {side}: build of the choices, to race it"),
        verify)
    for side, (rows, verdict) in ranked.items():
        changed = [r for r in rows if r.chosen != 0]
        click.echo(f"{side}x{side}: {len(rows)} tasks with two or more candidates; {len(changed)} change their "
                   f"record, saving {sum(r.saved_us for r in changed) / 1000:.2f} ms a run (as timed in the run)")
        for r in changed:
            times = " / ".join(f"{us:.1f}" for us in r.run_us)
            click.echo(f"  {r.task} x{r.uses}: us a call {times}; takes candidate {r.chosen + 1}, "
                       f"-{r.saved_us:.0f} us a run")
        if verdict:
            r = verdict.race
            click.echo(f"  raced against the build before ({len(r.pairs)} pairs of fresh processes): median "
                       f"after/before {r.ratio:.3f}, faster in {r.wins}: "
                       + ("kept" if verdict.kept else f"not kept, the database is unchanged at {side}x{side}"))

if __name__ == "__main__":
    main()
