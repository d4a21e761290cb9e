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


def _one_source(model, onnx_file):
    if bool(model) == bool(onnx_file):
        raise UserError("give exactly one of --model NAME or --onnx FILE")


def _sides(spec: str, model: str | None) -> list[int]:
    from tunekit.resolutions import parse_resolutions

    multiple_of = 1
    if model:
        from tunekit.models import get_spec

        multiple_of = get_spec(model).multiple_of
    return parse_resolutions(spec, multiple_of)


RES_HELP = "Resolutions: 224, 160,224,320, 112..448 (step 56) or 112..448:32."


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
    from tunekit.cost import zoo_costs
    from tunekit.models import MODELS

    rows = []
    for name, spec in MODELS.items():
        cost = zoo_costs(name, [224])[0]
        rows.append([name, spec.description, f"{cost.params / 1e6:.2f}M", f"{cost.gmacs:.3f}", spec.reference])
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

    _one_source(model, onnx_file)
    if weights and not model:
        raise UserError("--weights goes with --model (an ONNX file carries its own weights)")
    sides = _sides(res, model)
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

    _one_source(model, onnx_file)
    sides = _sides(res, model)
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
