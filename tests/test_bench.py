"""tunekit bench and compare on the tiny conv net: real TVM builds, real PyTorch, real timings."""

import copy
import json

import pytest

from tunekit import bench

BACKEND_FIELDS = {"median_ms", "p10_ms", "p90_ms", "gflops_per_s", "images_per_s"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from click.testing import CliRunner

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("bench")
    args = ["bench", "--model", "tinyconv", "--res", "32,48", "--db", str(root / "none.db"), "--repeats", "5",
            "--output", str(root / "r.json"), "--output", str(root / "r.md"), "--output", str(root / "r.csv"),
            "--plot", str(root / "r.png")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, json.loads((root / "r.json").read_text()), result.output


def test_json_has_every_field(report):
    root, data, _ = report
    assert data["model"] == "tinyconv" and data["threads"] >= 1 and data["batch"] == 1
    assert data["machine"]["cpu"] and data["machine"]["cores"] >= 1 and isinstance(data["machine"]["isa"], list)
    assert {"torch", "onednn", "tvm"} <= set(data["versions"])
    assert data["protocol"]["repeats"] == 5 and "median" in data["protocol"]["text"]
    assert [r["resolution"] for r in data["rows"]] == [32, 48]
    for row in data["rows"]:
        for backend in ("tuned", "onednn", "untuned", "onnxruntime"):
            assert BACKEND_FIELDS <= set(row[backend]), backend
            s = row[backend]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
        assert row["onednn"]["layout"] in ("NCHW", "channels_last")
        assert row["speedup_vs_onednn"] == pytest.approx(row["onednn"]["median_ms"] / row["tuned"]["median_ms"])
    assert set(data["scaling_efficiency"]) == {"tuned", "onednn", "untuned", "onnxruntime"}


def test_markdown_csv_and_plot_are_written(report):
    root, data, output = report
    md = (root / "r.md").read_text()
    assert "| res | GFLOPs | tuned ms | onednn ms | untuned ms | onnxruntime ms | speedup vs oneDNN |" in md
    assert "Command: `tunekit bench --model tinyconv" in md
    assert (root / "r.csv").read_text().count("\n") == 1 + 2 * 4
    assert (root / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency, ms" in output and "throughput" in output


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_compare_passes_an_equal_run_and_catches_a_planted_regression(report, cli, tmp_path):
    _, data, _ = report
    base = _write(tmp_path / "base.json", data)
    same = cli("compare", base, base, "--max-regression", "5%")
    assert same.exit_code == 0, same.output
    slower = copy.deepcopy(data)
    for key in ("median_ms", "p10_ms", "p90_ms"):
        slower["rows"][1]["tuned"][key] = data["rows"][1]["tuned"]["p90_ms"] * 1.2 if key == "p10_ms" else \
            data["rows"][1]["tuned"][key] * 1.2
    new = _write(tmp_path / "new.json", slower)
    result = cli("compare", base, new, "--max-regression", "5%")
    assert result.exit_code == 1
    assert "REGRESSION" in result.output and "+20.0%" in result.output
    assert cli("compare", base, new, "--max-regression", "25%").exit_code == 0
    assert cli("compare", base, new, "--backends", "onednn").exit_code == 0


def test_compare_does_not_fail_a_slowdown_within_the_spread(report):
    _, data, _ = report
    noisy = copy.deepcopy(data)
    s = noisy["rows"][0]["tuned"]
    s["p90_ms"] = s["median_ms"] * 2
    slower = copy.deepcopy(noisy)
    t = slower["rows"][0]["tuned"]
    t["median_ms"], t["p10_ms"] = s["median_ms"] * 1.2, s["median_ms"] * 0.9  # overlaps the base spread
    rows, regressed = bench.compare(noisy, slower, 0.05, ["tuned"])
    assert not regressed and rows[0][-1] == "slower, within spread"


def test_bad_inputs(cli, tmp_path):
    result = cli("bench", "--model", "tinyconv", "--res", "32", "--backends", "tuned,tensorrt")
    assert result.exit_code == 2 and "unknown backend 'tensorrt'" in result.output
    result = cli("bench", "--model", "tinyconv", "--res", "32", "--artifacts", tmp_path / "nothing")
    assert result.exit_code == 2 and "no manifest.json" in result.output
    result = cli("bench", "--model", "tinyconv", "--res", "32", "--target", "cuda-sm90")
    assert result.exit_code == 2 and "GPU target" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = cli("compare", bad, bad)
    assert result.exit_code == 2 and "not a `tunekit bench" in result.output
    result = cli("compare", bad, bad, "--max-regression", "lots")
    assert result.exit_code == 2


def test_artifacts_missing_a_resolution(cli, tmp_path):
    out = tmp_path / "art"
    assert cli("build", "--model", "tinyconv", "--res", "32", "--out", out, "--db", tmp_path / "n.db").exit_code == 0
    result = cli("bench", "--model", "tinyconv", "--res", "32,48", "--artifacts", out, "--backends", "tuned",
                 "--repeats", "3")
    assert result.exit_code == 2 and "has no tinyconv-48x48-b1.host.so" in result.output
