"""tunekit evaluate on a synthetic labelled folder and a real tinyconv bundle."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from click.testing import CliRunner
    from PIL import Image

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("evaluate")
    result = CliRunner().invoke(main, ["build", "--model", "tinyconv", "--res", "32,48", "--out", str(root / "art"),
                                       "--db", str(root / "none.db")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / "data" / name).mkdir(parents=True)
        for i, size in enumerate(((40, 40), (36, 52), (64, 48))):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / name / f"{i}.png")
    (root / "data" / "dog" / "notes.txt").write_text("not an image, skipped")
    return root


def test_evaluate_reports_resolutions_policies_and_the_oracle(world, cli):
    out = world / "eval.json"
    result = cli("evaluate", "--bundle", world / "art", "--data", world / "data", "--policy", "nearest",
                 "--policy", "cascade:0.99", "--policy", "budget:1000", "--output", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["classes"] == ["cat", "dog"]
    assert [r["resolution"] for r in report["resolutions"]] == [[32, 32], [48, 48]]
    assert [p["policy"] for p in report["policies"]] == ["nearest", "cascade:0.99", "budget:1000"]
    for entry in report["resolutions"] + report["policies"] + [report["oracle"]]:
        assert entry["images"] == 6 and 0 <= entry["accuracy"] <= 1 and 0 < entry["mean_ms"] <= entry["p90_ms"]
    # cascade at 0.99 on a near-uniform 10-class net runs every image at both resolutions
    assert report["policies"][1]["runs_at"] == {"32x32": 6, "48x48": 6}
    assert report["policies"][2]["runs_at"] == {"48x48": 6}  # the largest fits 1000 ms
    assert sum(report["policies"][0]["runs_at"].values()) == 6
    # the oracle is right wherever any resolution is
    assert report["oracle"]["accuracy"] >= max(r["accuracy"] for r in report["resolutions"])
    assert "oracle" in result.output and "top-1" in result.output


@pytest.mark.parametrize("args, message", [
    (["--policy", "budget"], "expected nearest, budget:MS"),
    (["--policy", "cascade:2"], "expected nearest, budget:MS"),
    (["--policy", "budget:0.0001"], "no resolution fits 0.0001 ms"),
    (["--output", "x.txt"], "name a .json or .md file"),
])
def test_evaluate_bad_input_is_one_line(world, cli, args, message):
    result = cli("evaluate", "--bundle", world / "art", "--data", world / "data", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_evaluate_refuses_folders_without_classes_or_images(world, cli, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    result = cli("evaluate", "--bundle", world / "art", "--data", tmp_path / "flat")
    assert result.exit_code == 2 and "no class subfolders" in result.output
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    result = cli("evaluate", "--bundle", world / "art", "--data", tmp_path / "empty")
    assert result.exit_code == 2 and "no PNG or JPEG images" in result.output


def _scale_onnx(path, outputs):
    """A scale model whose choice is known by construction: the scores are +mean, -mean, +mean, ... of the
    image (a bright image picks the smallest resolution, a dark one the next)."""
    import torch

    class Scale(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3), keepdim=False).unsqueeze(1)
            return torch.cat([m * (1 if i % 2 == 0 else -1) for i in range(outputs)], dim=1)

    torch.onnx.export(Scale(), torch.zeros(1, 3, 16, 16), str(path), input_names=["input"],
                      output_names=["scores"], dynamo=False)
    return path


def test_scale_policy_runs_the_resolution_the_scale_model_picks(world, tmp_path):
    import tunekit
    from tunekit.errors import ArtifactError

    scale = tunekit.ScaleModel(_scale_onnx(tmp_path / "scale.onnx", 2))
    assert scale.input_shape == (1, 3, 16, 16) and scale.outputs == 2
    bundle = tunekit.load_bundle(world / "art", policy="scale", scale_model=scale)
    bright, dark = np.full((1, 3, 40, 50), 1.0, np.float32), np.full((1, 3, 40, 50), -1.0, np.float32)
    assert bundle.run(bright, return_route=True)[1]["resolutions"] == [[32, 32]]
    assert bundle.run(dark, return_route=True)[1]["resolutions"] == [[48, 48]]
    by_path = tunekit.load_bundle(world / "art", policy="scale", scale_model=tmp_path / "scale.onnx")
    assert by_path.run(dark, return_route=True)[1]["resolutions"] == [[48, 48]]
    with pytest.raises(ArtifactError, match="the scale model gives 3 scores; the bundle has 2 resolutions"):
        tunekit.load_bundle(world / "art", policy="scale", scale_model=_scale_onnx(tmp_path / "s3.onnx", 3))
    with pytest.raises(ArtifactError, match="policy='scale' needs it"):
        tunekit.load_bundle(world / "art", policy="scale")


def test_evaluate_takes_a_scale_policy(world, cli, tmp_path):
    out = tmp_path / "e.json"
    path = _scale_onnx(tmp_path / "scale.onnx", 2)
    result = cli("evaluate", "--bundle", world / "art", "--data", world / "data", "--policy", f"scale:{path}",
                 "--format", "json", "--output", out)
    assert result.exit_code == 0, result.output
    (policy,) = json.loads(out.read_text())["policies"]
    assert policy["policy"] == f"scale:{path}" and sum(policy["runs_at"].values()) == 6


def test_a_labels_file_orders_the_classes(world, cli, tmp_path):
    (tmp_path / "labels.txt").write_text("dog\ncat\nbird\n")
    out = tmp_path / "e.json"
    result = cli("evaluate", "--bundle", world / "art", "--data", world / "data", "--labels", tmp_path / "labels.txt",
                 "--output", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["classes"] == ["dog", "cat", "bird"]
    (tmp_path / "short.txt").write_text("cat\n")
    result = cli("evaluate", "--bundle", world / "art", "--data", world / "data", "--labels", tmp_path / "short.txt")
    assert result.exit_code == 2 and "subfolder(s) dog not in the labels file" in result.output


def test_plan_refuses_a_report_that_is_not_evaluate_json(cli, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"resolutions": [], "policies": [{"policy": "nearest"}]}))
    result = cli("plan", "--accuracy", tmp_path / "bad.json", "--budget-ms", "5")
    assert result.exit_code == 2 and "not a tunekit evaluate JSON report (no 'accuracy')" in result.output
    result = cli("plan", "--budget-ms", "5")
    assert result.exit_code == 2 and "give --report BENCH.json, --accuracy EVALUATE.json, or both" in result.output
