"""The command line as a user meets it: exit codes, one-line errors, help with examples."""

import json

import click
import pytest

from tunekit.cli import main


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in _commands(main)], ids=" ".join)
def test_every_command_has_help_with_example(cli, path):
    result = cli(*path, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "tunekit " in result.output


@pytest.mark.parametrize("args, message", [
    (["flops", "--model", "resnet18", "--res", "448..112"], "448 > 112"),
    (["flops", "--model", "resnet18", "--res", "abc"], "not an integer"),
    (["flops", "--model", "resnet18", "--res", "0"], "outside 1..4096"),
    (["flops", "--model", "resnet18", "--res", "112..448:0"], "step must be positive"),
    (["flops", "--model", "nope", "--res", "224"], "unknown model 'nope'; choose from: resnet18"),
    (["flops", "--model", "vit_s16", "--res", "112..448"], "not multiples of the patch size 16"),
    (["flops", "--res", "224"], "exactly one of --model NAME or --onnx FILE"),
    (["export", "--onnx", "missing.onnx", "--res", "224", "--out", "x"], "ONNX file not found"),
    (["export", "--model", "tinyconv", "--res", "32", "--out", "x", "--weights", "nope.pt"],
     "weights file not found"),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()  # the error is one line on stderr
    assert line.startswith("Error: ") and message in line


def test_flops_json(cli):
    result = cli("flops", "--model", "tinyconv", "--res", "32,64", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)["rows"]
    assert [r["resolution"] for r in rows] == [32, 64]
    assert rows[1]["gmacs"] > 3.9 * rows[0]["gmacs"]


def test_export_and_models_commands(cli, tmp_path):
    result = cli("export", "--model", "tinyconv", "--res", "32..64:32", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "tinyconv-64x64-b1.onnx: ok" in result.output
    assert (tmp_path / "tinyconv-32x32-b1.onnx").is_file()
    result = cli("models")
    assert result.exit_code == 0 and "mobilenet_v2" in result.output


def test_models_answers_from_the_registry_without_exporting_or_tvm():
    """`tunekit models` must answer at once: no export per model (17 s before), no TVM import, no warnings."""
    import subprocess
    import sys

    probe = ("import sys; from click.testing import CliRunner; from tunekit.cli import main; "
             "r = CliRunner().invoke(main, ['models']); assert r.exit_code == 0, r.output; "
             "print('resnet50' in r.output, 'tunekit.export' in sys.modules, 'tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-W", "default", "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]
    assert "Warning" not in out.stderr
