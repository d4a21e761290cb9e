"""tunekit scale-model train on a synthetic data set whose needed resolution is known by construction
(benchmarks/dynamic/synthetic.py: coarse classes are told apart at any resolution, fine classes only at
full resolution), with a real backbone trained on it, built with TVM, and evaluated."""

import copy
import json
import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "dynamic"))
import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from click.testing import CliRunner

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("scale")
    synthetic.write_folder(root / "train", per_class=40, seed=0)
    synthetic.write_folder(root / "test", per_class=30, seed=1)
    net = synthetic.train_backbone(root / "train", epochs=6)
    synthetic.export_backbone(net, root / "backbone.onnx")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    run("build", "--onnx", root / "backbone.onnx", "--res", "16,32,64", "--out", root / "art", "--db", root / "none.db")
    trained = run("scale-model", "train", "--bundle", root / "art", "--data", root / "train",
                  "--out", root / "scale.onnx", "--epochs", 20)
    run("evaluate", "--bundle", root / "art", "--data", root / "test", "--policy", f"scale:{root / 'scale.onnx'}",
        "--policy", "cascade:0.9", "--output", root / "eval.json", "--plot", root / "eval.png")
    return root, trained.output, json.loads((root / "eval.json").read_text())


def test_the_synthetic_set_needs_full_resolution_for_its_fine_classes(world):
    _, _, report = world
    accuracy = {r["resolution"][0]: r["accuracy"] for r in report["resolutions"]}
    # coarse classes (half) are right anywhere, fine ones only at 64: about 50% + a guess among 4 below it
    assert accuracy[64] >= 0.97 and accuracy[16] < 0.8 and accuracy[32] < 0.8, accuracy
    assert report["oracle"]["accuracy"] >= accuracy[64]


def test_the_trained_scale_model_keeps_full_accuracy_running_the_coarse_half_small(world):
    root, output, report = world
    (fixed,) = [r for r in report["resolutions"] if r["resolution"] == [64, 64]]
    (scale, cascade) = report["policies"]
    assert scale["policy"] == f"scale:{root / 'scale.onnx'}"
    assert scale["accuracy"] >= fixed["accuracy"] - 0.01, (scale, fixed)
    # it sends the coarse half (and not much more) to 16x16, a sixteenth of 64x64's pixels; what that
    # saves in milliseconds is measured in benchmarks/dynamic, not here (a timed test fails on a noisy VM)
    low = scale["runs_at"].get("16x16", 0) / scale["images"]
    assert 0.4 <= low <= 0.6, scale["runs_at"]
    assert sum(scale["runs_at"].values()) == scale["images"], scale["runs_at"]  # one backbone run per image
    assert cascade["accuracy"] >= fixed["accuracy"] - 0.01
    # the command said what it learned, and the scale model carries the bundle's resolutions
    assert "labels (smallest resolution the backbone gets right): 16x16:" in output and "held-out" in output
    props = {p.key: p.value for p in onnx.load(str(root / "scale.onnx")).metadata_props}
    assert json.loads(props["tunekit.resolutions"]) == [[16, 16], [32, 32], [64, 64]]
    assert (root / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_scale_model_trained_for_other_resolutions_is_refused(world, tmp_path):
    import tunekit
    from tunekit.errors import ArtifactError

    root, _, _ = world
    graph = onnx.load(str(root / "scale.onnx"))
    (prop,) = [p for p in graph.metadata_props if p.key == "tunekit.resolutions"]
    prop.value = "[[16, 16], [32, 32], [48, 48]]"
    onnx.save(graph, str(tmp_path / "other.onnx"))
    with pytest.raises(ArtifactError, match="trained for a bundle at 16x16, 32x32, 48x48; this one is at "
                                            "16x16, 32x32, 64x64"):
        tunekit.load_bundle(root / "art", policy="scale", scale_model=tmp_path / "other.onnx")


def test_plan_picks_the_most_accurate_choice_within_a_budget(world, cli, tmp_path):
    root, _, measured = world
    report = copy.deepcopy(measured)
    # the measured accuracies with set latencies, so that the choice does not hang on this VM's noise:
    # 16/32/64 at 1/2/4 ms, the scale policy at 2.5 ms (it fits 3 ms, full resolution does not), the
    # cascade (at least as accurate, it may run twice) at 3.5 ms
    for entry, ms in zip(report["resolutions"] + report["policies"], [1.0, 2.0, 4.0, 2.5, 3.5]):
        entry["mean_ms"] = ms
    (tmp_path / "eval.json").write_text(json.dumps(report))
    result = cli("plan", "--accuracy", tmp_path / "eval.json", "--budget-ms", 3)
    assert result.exit_code == 0, result.output
    assert "most accurate within 3 ms: scale:" in result.output
    result = cli("plan", "--accuracy", tmp_path / "eval.json", "--budget-ms", "0.0001")
    assert result.exit_code == 2 and "fits 0.0001 ms: the fastest, 16x16" in result.output


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/scale.txt"], "name a .onnx file"),
    (["--out", "{tmp}/s.onnx", "--val-fraction", "1"], "expected 0 <= fraction < 1"),
])
def test_scale_model_train_bad_input_is_one_line(world, cli, tmp_path, args, message):
    root, _, _ = world
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli("scale-model", "train", "--bundle", root / "art", "--data", root / "train", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(tmp_path.iterdir())
