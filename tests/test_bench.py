"""tunekit bench and compare on the tiny conv net: real TVM builds, real PyTorch, real timings."""

import copy
import json
import re

import numpy as np
import pytest

from tunekit import benching as bench
from tunekit import regression

BACKEND_FIELDS = {"median_ms", "p10_ms", "p90_ms", "gflops_per_s", "images_per_s"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from click.testing import CliRunner

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("bench")
    args = ["bench", "--model", "tinyconv", "--res", "32,48", "--db", str(root / "none.db"), "--repeats", "3",
            "--processes", "2",
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
    assert data["protocol"]["repeats"] == 3 and data["protocol"]["processes"] == 2
    assert "median" in data["protocol"]["text"] and "worker process per backend" in data["protocol"]["isolation"]
    assert data["peak"]["gflops"] > 0 and "MatMul" in data["peak"]["how"]
    assert data["machine"]["mcpu"]
    assert [r["resolution"] for r in data["rows"]] == [32, 48]
    for row in data["rows"]:
        for backend in bench.BACKENDS:
            assert BACKEND_FIELDS <= set(row[backend]), backend
            s = row[backend]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
            assert s["samples"] == 6 and len(s["raw_ms"]) == 6 and len(s["process_medians_ms"]) == 2
            assert 0 < s["pct_peak"]
        assert row["onednn"]["layout"] in ("NCHW", "channels_last")
        assert row["speedup_vs_onednn"] == pytest.approx(row["onednn"]["median_ms"] / row["tuned"]["median_ms"])
        fastest = row["speedup_vs_fastest_library"]
        assert fastest["ratio"] == pytest.approx(row[fastest["backend"]]["median_ms"] / row["tuned"]["median_ms"])
    assert set(data["scaling_efficiency"]) == set(bench.BACKENDS)
    small, large = data["rows"]
    for name, eff in data["scaling_efficiency"].items():  # the FLOP rate at 48 over the rate at 32
        assert eff == pytest.approx((large["gflops"] / large[name]["median_ms"])
                                    / (small["gflops"] / small[name]["median_ms"]))


def test_markdown_csv_and_plot_are_written(report):
    root, data, output = report
    md = (root / "r.md").read_text()
    assert ("| res | GFLOPs | tuned ms | onednn ms | untuned ms | onnxruntime ms | openvino ms | speedup vs oneDNN |"
            " speedup vs fastest library |") in md
    assert "Command: `tunekit bench --model tinyconv" in md and "Spread across processes" in md
    assert (root / "r.csv").read_text().count("\n") == 1 + 2 * 5
    assert (root / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "latency, ms" in output and "throughput" in output


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _slower(data, factor, backends=("tuned",), row=1):
    """``data`` with every sample of ``backends`` at ``row`` scaled by ``factor`` (a planted change)."""
    out = copy.deepcopy(data)
    for b in backends:
        s = out["rows"][row][b]
        s["raw_ms"] = [v * factor for v in s["raw_ms"]]
        for key in ("median_ms", "p10_ms", "p90_ms"):
            s[key] *= factor
    return out


def test_report_states_its_identity_and_validates(report):
    _, data, _ = report
    assert data["schema_version"] == regression.SCHEMA_VERSION and data["resolutions"] == [32, 48]
    assert data["onnx_sha256"] is None and data["versions"]["tunekit"] and data["date"][:2] == "20"
    assert data["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", data["git_commit"])
    assert regression.validate(data, "r.json") is data
    for row in data["rows"]:
        assert sorted(set(row["tuned"]["raw_process"])) == [0, 1]


def test_compare_passes_an_equal_run_and_catches_a_planted_regression(report, cli, tmp_path):
    _, data, _ = report
    base = _write(tmp_path / "base.json", data)
    same = cli("compare", base, base, "--max-regression", "5%")
    assert same.exit_code == 0, same.output
    # planted well beyond the noise: a tiny model's 2 processes can differ 1.9x on a shared 2-core VM (seen:
    # +30% planted gave a 95% interval of -30% .. +148%, rightly "not significant")
    new = _write(tmp_path / "new.json", _slower(data, 3.0))
    result = cli("compare", base, new, "--max-regression", "5%")
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and "+200.0%" in result.output
    assert cli("compare", base, new, "--max-regression", "250%").exit_code == 0
    assert cli("compare", base, new, "--backends", "onednn").exit_code == 0


def test_relative_mode_ignores_a_machine_that_is_slower_for_every_backend(report, cli, tmp_path):
    _, data, _ = report
    base = _write(tmp_path / "base.json", data)
    everything_slower = _write(tmp_path / "slow.json", _slower(data, 3.0, ("tuned", "onednn", "onnxruntime")))
    assert cli("compare", base, everything_slower).exit_code == 1
    result = cli("compare", base, everything_slower, "--relative-to", "onednn")
    assert result.exit_code == 0, result.output
    assert "x onednn" in result.output
    # planted beyond this run's own spread: the ratio tuned/onnxruntime of one process round can differ from
    # another's by its spread, and base and new each draw their rounds (CI once saw 3x called not significant)
    ratios = [np.median(t) / np.median(o) for t, o in zip(regression._processes(data["rows"][1]["tuned"]),
                                                          regression._processes(data["rows"][1]["onnxruntime"]))]
    factor = 3.0 * (max(ratios) / min(ratios)) ** 2
    tuned_only = _write(tmp_path / "tuned.json", _slower(data, factor))
    result = cli("compare", base, tuned_only, "--relative-to", "onnxruntime")
    assert result.exit_code == 1 and "REGRESSION" in result.output, (factor, result.output)


def test_a_change_within_the_noise_between_processes_is_not_a_regression(report):
    _, data, _ = report

    def with_samples(of_process):
        out = copy.deepcopy(data)
        s = out["rows"][0]["tuned"]
        s["raw_ms"] = [of_process(p) for p in s["raw_process"]]
        s["median_ms"] = float(np.median(s["raw_ms"]))
        return out

    # process 1 twice as slow as process 0 (TVM's bimodal processes, exaggerated): 10% is within that noise
    noisy = with_samples(lambda p: 2.0 if p == 1 else 1.0)
    change = regression.compare(noisy, _slower(noisy, 1.1, row=0), 0.05, ["tuned"])[0]
    assert change.change == pytest.approx(0.1) and change.low <= 0 and change.verdict == "slower, not significant"
    steady = with_samples(lambda p: 1.0)
    change = regression.compare(steady, _slower(steady, 1.1, row=0), 0.05, ["tuned"])[0]
    assert change.verdict == "REGRESSION" and change.low > 0
    faster = regression.compare(steady, _slower(steady, 0.8, row=0), 0.05, ["tuned"])[0]
    assert faster.verdict == "faster" and faster.high < 0


def test_compare_refuses_reports_of_different_experiments(report, cli, tmp_path):
    _, data, _ = report
    base = _write(tmp_path / "base.json", data)
    for field, value, message in (("batch", 8, "differ in batch (1 vs 8)"), ("threads", 64, "differ in threads"),
                                  ("model", "resnet50", "differ in model")):
        other = _write(tmp_path / f"{field}.json", {**data, field: value})
        result = cli("compare", base, other)
        assert result.exit_code == 2 and message in result.output, result.output
    other_isa = copy.deepcopy(data)
    other_isa["machine"]["isa"] = ["sse4_2", "avx", "avx2", "fma"]
    result = cli("compare", base, _write(tmp_path / "isa.json", other_isa))
    assert result.exit_code == 2 and "differ in ISA" in result.output
    other_versions = copy.deepcopy(data)
    other_versions["versions"]["torch"] = "0.0.1"
    result = cli("compare", base, _write(tmp_path / "v.json", other_versions))
    assert result.exit_code == 0 and "warning: torch version differs" in result.output


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(rows=5), "rows: 5 is not of type 'array'"),
    (lambda d: d["rows"][0]["tuned"].pop("p10_ms"), "rows/0/tuned: 'p10_ms' is a required property"),
    (lambda d: d.update(schema_version=0), "expected 1: re-run tunekit bench"),
    (lambda d: d.pop("machine"), "'machine' is a required property"),
])
def test_compare_refuses_a_malformed_report_in_one_line(report, cli, tmp_path, mutate, message):
    _, data, _ = report
    bad = copy.deepcopy(data)
    mutate(bad)
    result = cli("compare", _write(tmp_path / "base.json", data), _write(tmp_path / "bad.json", bad))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0


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
    assert result.exit_code == 2 and "not a usable bench report" in result.output
    result = cli("compare", bad, bad, "--max-regression", "lots")
    assert result.exit_code == 2


def test_artifacts_missing_a_resolution(cli, tmp_path):
    out = tmp_path / "art"
    assert cli("build", "--model", "tinyconv", "--res", "32", "--out", out, "--db", tmp_path / "n.db").exit_code == 0
    result = cli("bench", "--model", "tinyconv", "--res", "32,48", "--artifacts", out, "--backends", "tuned",
                 "--repeats", "3")
    assert result.exit_code == 2 and "has no tinyconv-48x48-b1.host.so" in result.output


def test_every_backend_runs_in_fresh_worker_processes_of_its_own(tmp_path):
    """The mechanism behind the fair race: one process per backend and per round, never the caller's."""
    import os

    from tunekit.export import torch_to_onnx
    from tunekit.frontend import zoo_model
    from tunekit.keys import Key

    key = Key("tinyconv", 32, 32)
    path = tmp_path / "t.onnx"
    path.write_bytes(torch_to_onnx(zoo_model("tinyconv", None), key).SerializeToString())
    jobs = {b: [bench.Job(key, str(path), model="tinyconv")] for b in ("onednn", "onnxruntime")}
    protocol = bench.Protocol(warmup_ms=20, repeats=3, processes=2, min_repeat_ms=5)
    (per_key,), errors = bench.race(jobs, 1, protocol)
    assert errors == {}
    pids = {b: set(per_key[b].pids) for b in jobs}
    assert all(len(p) == 2 for p in pids.values())  # a fresh process per round
    assert not pids["onednn"] & pids["onnxruntime"] and os.getpid() not in pids["onednn"] | pids["onnxruntime"]
    assert all(len(per_key[b].pairs) == 6 for b in jobs)


def test_a_backend_that_fails_in_its_worker_is_one_line_and_the_others_go_on(tmp_path):
    from tunekit.export import torch_to_onnx
    from tunekit.frontend import zoo_model
    from tunekit.keys import Key

    key = Key("tinyconv", 32, 32)
    good = tmp_path / "t.onnx"
    good.write_bytes(torch_to_onnx(zoo_model("tinyconv", None), key).SerializeToString())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    jobs = {"onnxruntime": [bench.Job(key, str(bad))], "onednn": [bench.Job(key, str(good), model="tinyconv")]}
    protocol = bench.Protocol(warmup_ms=20, repeats=3, processes=1, min_repeat_ms=5)
    (per_key,), errors = bench.race(jobs, 1, protocol)
    assert set(errors) == {"onnxruntime"} and "\n" not in errors["onnxruntime"]
    assert errors["onnxruntime"].startswith("onnxruntime: ")
    assert len(per_key["onednn"].pairs) == 3


def test_a_worker_that_dies_is_reported_not_hung():
    import signal

    worker = bench._Worker("onednn", 1)
    try:
        worker.proc.kill()
        worker.proc.join()
        with pytest.raises(bench.WorkerError, match=f"onednn: its worker process died \\(exit code -{signal.SIGKILL}\\)"):
            worker.ask("repeat", timeout=30)
    finally:
        worker.close()


def test_isolation_check_reports_race_against_solo(cli, tmp_path):
    out = tmp_path / "iso.json"
    result = cli("bench", "--model", "tinyconv", "--res", "32", "--db", tmp_path / "none.db", "--backends",
                 "untuned,onnxruntime", "--repeats", "3", "--processes", "1", "--isolation-check", "--output", out)
    assert result.exit_code == 0, result.output
    assert "isolation check" in result.output
    data = json.loads(out.read_text())
    assert data["protocol"]["isolation_check"] is True
    for b in ("untuned", "onnxruntime"):
        solo = data["rows"][0][b]["solo"]
        assert solo["median_ms"] > 0 and solo["tolerance"] >= 0.05
        assert solo["deviation"] == pytest.approx(data["rows"][0][b]["median_ms"] / solo["median_ms"] - 1)
        assert solo["agrees"] == (abs(solo["deviation"]) <= solo["tolerance"])


def test_plan_gives_the_highest_resolution_within_a_budget(report, cli, tmp_path):
    _, data, _ = report
    path = _write(tmp_path / "r.json", data)
    everything = max(r[b]["median_ms"] for r in data["rows"] for b in bench.BACKENDS) * 2
    result = cli("plan", "--report", path, "--budget-ms", everything)
    assert result.exit_code == 0, result.output
    assert result.output.count("48x48") == len(bench.BACKENDS)
    assert "tuned fits 48 where oneDNN fits 48: the paper's headline does not hold" in result.output
    # tuned fast enough for 48, oneDNN only for 32: the headline holds
    planted = copy.deepcopy(data)
    budget = planted["rows"][0]["onednn"]["median_ms"] * 1.01
    planted["rows"][1]["onednn"]["median_ms"] = budget * 2
    planted["rows"][1]["tuned"]["median_ms"] = planted["rows"][0]["tuned"]["median_ms"] = budget / 2
    planted["rows"][0]["onednn"]["median_ms"] = budget / 1.01
    result = cli("plan", "--report", _write(tmp_path / "p.json", planted), "--budget-ms", budget)
    assert "tuned fits 48 where oneDNN fits 32: the paper's headline holds" in result.output, result.output
    nothing = cli("plan", "--report", path, "--budget-ms", 1e-6)
    assert nothing.exit_code == 0 and "none (fastest" in nothing.output
    assert cli("plan", "--report", path, "--budget-ms", 0).exit_code == 2
    bad = _write(tmp_path / "bad.json", {"rows": 5})
    result = cli("plan", "--report", bad, "--budget-ms", 5)
    assert result.exit_code == 2 and "not a usable bench report" in result.output


def test_ci_recipe_passes_an_unchanged_build_and_fails_a_worse_one(cli, tmp_path):
    """make bench-ci's two steps (bench tuned beside ONNX Runtime, then compare relative to it) on tinyconv.
    The worse build is the same model compiled for plain x86-64 without LLVM's optimisations (opt-level 0:
    ~15x slower on one thread of Zen 5), measured with the same threads; the gate's threshold is half the
    slowdown it measures here, never above 25%. A subtler worse build (SSE2 code, optimised: 1.2x) made
    this test flaky on a noisy host: with 3 processes its 95% interval reached below zero twice (-0.9% in
    session 22, -2.3% in session 23) and the gate rightly called a change that small not significant."""
    threads = "1"
    slow = tmp_path / "o0.json"
    slow.write_text(json.dumps({"name": "o0", "description": "x86-64 baseline ISA, unoptimised code",
                                "tvm": {"kind": "llvm", "mcpu": "x86-64", "num-cores": 1, "opt-level": 0},
                                "cores": 1, "threads": 1}))
    builds = {"good": "host", "worse": str(slow)}
    for name, target in builds.items():
        result = cli("build", "--model", "tinyconv", "--res", "64", "--target", target, "--out", tmp_path / name,
                     "--db", tmp_path / "none.db")
        assert result.exit_code == 0, result.output

    def bench_ci(name, out):
        result = cli("bench", "--model", "tinyconv", "--res", "64", "--target", builds[name], "--artifacts",
                     tmp_path / name, "--backends", "tuned,onnxruntime", "--threads", threads, "--repeats", "10",
                     "--format", "json", "--output", tmp_path / out)
        assert result.exit_code == 0, result.output
        return tmp_path / out

    base, again, worse = bench_ci("good", "base.json"), bench_ci("good", "again.json"), bench_ci("worse", "worse.json")

    def relative(path):
        (row,) = json.loads(path.read_text())["rows"]
        return row["tuned"]["median_ms"] / row["onnxruntime"]["median_ms"]

    # How much worse the unoptimised code is depends on the CPU, so the gate's threshold is half of what
    # this host measured, never above 25%.
    slowdown = relative(worse) / relative(base) - 1
    assert slowdown > 0.10, f"the unoptimised build is only {slowdown:.1%} slower here: no regression to catch"
    gate = ("--relative-to", "onnxruntime", "--max-regression", f"{min(25.0, 100 * slowdown / 2):.1f}%")
    unchanged = cli("compare", base, again, *gate)
    assert unchanged.exit_code == 0, unchanged.output
    regressed = cli("compare", base, worse, *gate)
    assert regressed.exit_code == 1 and "REGRESSION" in regressed.output, regressed.output
