"""tunekit build and the runtime API on the tiny conv net: real compiles, real runs, real PyTorch."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import tunekit
from tunekit.models import create_model
from tunekit.runtime import ArtifactError, has_cuda, resize_and_crop, resize_bilinear, softmax_top1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tinyconv at 32 and 48 for the host, no tuning records: every task takes its fallback schedule."""
    from click.testing import CliRunner

    from tunekit.cli import main

    root = tmp_path_factory.mktemp("build")
    out = root / "art"
    result = CliRunner().invoke(main, ["build", "--model", "tinyconv", "--res", "32,48", "--out", str(out),
                                       "--db", str(root / "none.db")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def _copy(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    return out


def _reference(x):
    net = create_model("tinyconv", None).eval()
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def test_build_writes_verified_libraries_and_manifest(built):
    out, output = built
    assert "32x32: 0 tuned, 0 transferred, 7 fallback" in output and "48x48: 0 tuned, 0 transferred, 7 fallback" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "tunekit-artifacts"
    entries = {e["file"]: e for e in manifest["artifacts"]}
    assert set(entries) == {"tinyconv-32x32-b1.host.so", "tinyconv-48x48-b1.host.so"}
    e = entries["tinyconv-48x48-b1.host.so"]
    assert e["resolution"] == [48, 48] and e["batch"] == 1 and e["target"]["kind"] == "llvm"
    assert e["input"] == {"name": "input", "shape": [1, 3, 48, 48], "dtype": "float32"}
    assert e["output"]["shape"] == [1, 10]
    assert (e["tasks"], e["tuned"], e["fallback"]) == (7, 0, 7)
    assert e["verification"] == "verified" and e["max_abs_err"] <= e["tolerance"]
    assert e["weight_prefetch"] is True  # the host's default (tunekit.prefetch)
    assert len(e["sha256"]) == 64 and e["tvm_version"]
    assert not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("side", [32, 48])
def test_loaded_artifact_matches_pytorch(built, side):
    artifact = tunekit.load(built[0] / f"tinyconv-{side}x{side}-b1.host.so")
    assert artifact.resolution == (side, side) and artifact.target["kind"] == "llvm"
    x = np.random.default_rng(7).standard_normal((1, 3, side, side), dtype=np.float32)
    np.testing.assert_allclose(artifact.run(x), _reference(x), rtol=1e-4, atol=1e-4)


def test_an_instrument_sees_every_kernel_call_and_can_be_removed(built):
    from tvm.runtime.vm import VMInstrumentReturnKind

    artifact = tunekit.load(built[0] / "tinyconv-32x32-b1.host.so")
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32), dtype=np.float32)
    calls = []

    def instrument(func, symbol, before, ret, *args):
        calls.append((symbol, before))
        return VMInstrumentReturnKind.NO_OP

    artifact.set_instrument(instrument)
    np.testing.assert_allclose(artifact.run(x), _reference(x), rtol=1e-4, atol=1e-4)  # the calls still run
    kernels = {symbol for symbol, before in calls if before and not symbol.startswith("vm.builtin.")}
    assert len(kernels) >= 5, calls  # tinyconv's fused kernels, each seen before and after
    assert sum(before for _, before in calls) * 2 == len(calls)
    artifact.set_instrument(None)
    seen = len(calls)
    artifact.run(x)
    assert len(calls) == seen


def test_profile_script_times_every_call_of_a_built_library(built):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile.py"  # not the stdlib's profile
    spec = importlib.util.spec_from_file_location("tunekit_profile", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    whole, rows = script.vm_profile(tunekit.load(built[0] / "tinyconv-48x48-b1.host.so"), runs=3)
    assert whole > 0 and all(n >= 1 and us > 0 for _, n, us in rows)
    assert any(symbol.startswith("fused_") or symbol.endswith("_prepacked") for symbol, _, _ in rows), rows


def test_wrong_shape_and_dtype_are_refused(built):
    artifact = tunekit.load(built[0] / "tinyconv-32x32-b1.host.so")
    with pytest.raises(ArtifactError, match=r"shape \[1, 3, 32, 32\], got \[1, 3, 48, 48\]"):
        artifact.run(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(ArtifactError, match="float32 input, got float64"):
        artifact.run(np.zeros((1, 3, 32, 32)))


def test_corrupted_library_is_refused(built, tmp_path):
    out = _copy(built, tmp_path)
    lib = out / "tinyconv-32x32-b1.host.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        tunekit.load(lib)
    tunekit.load(out / "tinyconv-48x48-b1.host.so")  # the other one still loads


def _edit_manifest(out, **changes):
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    for e in manifest["artifacts"]:
        e.update(changes)
    path.write_text(json.dumps(manifest))


def test_other_isa_and_tvm_version_are_refused(built, tmp_path):
    out = _copy(built, tmp_path)
    _edit_manifest(out, target={"kind": "llvm", "mcpu": "sapphirerapids"})  # AMX: no AMD CPU has it
    with pytest.raises(ArtifactError, match="built for sapphirerapids; this CPU lacks .*amx"):
        tunekit.load(out / "tinyconv-32x32-b1.host.so")
    _edit_manifest(out, target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    with pytest.raises(ArtifactError, match="lacks architecture aarch64"):
        tunekit.load(out / "tinyconv-32x32-b1.host.so")
    _edit_manifest(out, target={"kind": "llvm"}, tvm_version="0.19.0")
    with pytest.raises(ArtifactError, match="built with TVM 0.19.0"):
        tunekit.load(out / "tinyconv-32x32-b1.host.so")


def test_load_of_a_directory_needs_one_artifact(built):
    with pytest.raises(ArtifactError, match="holds 2 artifacts"):
        tunekit.load(built[0])


def test_bundle_routes_to_the_nearest_resolution(built):
    bundle = tunekit.load_bundle(built[0])
    assert bundle.resolutions == [(32, 32), (48, 48)]
    assert bundle.route(30, 30).resolution == (32, 32)
    assert bundle.route(40, 40).resolution == (48, 48)  # nearer in pixel count (log scale)
    assert bundle.route(64, 64).resolution == (48, 48)
    x = np.random.default_rng(3).standard_normal((1, 3, 37, 41), dtype=np.float32)
    resized = torch.nn.functional.interpolate(torch.from_numpy(x), size=(32, 35), mode="bilinear",
                                              align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, 32, 35), resized, rtol=1e-5, atol=1e-5)
    cropped = resized[:, :, :, 1:33]  # aspect kept, centre crop
    np.testing.assert_allclose(resize_and_crop(x, 32, 32), cropped, rtol=1e-5, atol=1e-5)
    out, route = bundle.run(x, return_route=True)
    np.testing.assert_allclose(out, _reference(cropped), rtol=1e-4, atol=1e-4)
    assert route["resolutions"] == [[32, 32]] and route["ms"] > 0


def test_build_measures_latency_into_the_manifest(built):
    for e in json.loads((built[0] / "manifest.json").read_text())["artifacts"]:
        latency = e["latency"]
        assert 0 < latency["median_ms"] <= latency["p90_ms"] and latency["runs"] >= 20 and latency["threads"] >= 1


def _with_latencies(built, tmp_path, ms: dict):
    out = _copy(built, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for e in manifest["artifacts"]:
        e["latency"]["median_ms"] = ms[e["resolution"][0]]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_budget_policy_takes_the_largest_resolution_that_fits(built, tmp_path):
    out = _with_latencies(built, tmp_path, {32: 1.0, 48: 2.0})
    x = np.zeros((1, 3, 64, 64), dtype=np.float32)
    for budget, side in ((1.5, 32), (2.0, 48), (50, 48)):
        bundle = tunekit.load_bundle(out, policy="budget", budget_ms=budget)
        assert bundle.run(x, return_route=True)[1]["resolutions"] == [[side, side]]
    with pytest.raises(ArtifactError, match=r"no resolution fits 0.5 ms: the fastest, 32x32, takes 1.00 ms"):
        tunekit.load_bundle(out, policy="budget", budget_ms=0.5)


def test_cascade_runs_up_while_the_top1_probability_is_below_the_threshold(built):
    # tinyconv with random weights: 10 classes, near-uniform softmax, so top-1 lies between 0.1 and 0.99
    x = np.random.default_rng(5).standard_normal((1, 3, 40, 40), dtype=np.float32)
    top1 = softmax_top1(_reference(resize_and_crop(x, 32, 32)))
    assert 0.1 <= top1 < 0.99
    sure = tunekit.load_bundle(built[0], policy="cascade", threshold=0.05)
    assert sure.run(x, return_route=True)[1]["resolutions"] == [[32, 32]]
    unsure = tunekit.load_bundle(built[0], policy="cascade", threshold=0.99)
    out, route = unsure.run(x, return_route=True)
    assert route["resolutions"] == [[32, 32], [48, 48]]
    np.testing.assert_allclose(out, _reference(resize_and_crop(x, 48, 48)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "fastest"}, "unknown policy 'fastest'"),
    ({"policy": "budget"}, "policy='budget' needs it"),
    ({"policy": "cascade", "threshold": 1.5}, "probability in \\(0, 1\\]"),
    ({"budget_ms": 3}, "budget_ms= goes with policy='budget'"),
])
def test_bad_policy_arguments(built, kwargs, message):
    with pytest.raises(ArtifactError, match=message):
        tunekit.load_bundle(built[0], **kwargs)


def test_bundle_refuses_an_image_with_the_wrong_channel_count(built):
    with pytest.raises(ArtifactError, match="takes 3-channel images, got 1 channels"):
        tunekit.load_bundle(built[0]).run(np.zeros((1, 1, 32, 32), dtype=np.float32))


def test_runs_in_a_process_without_torch_or_tunekit(built, tmp_path):
    """What a deployment needs: tvm's runtime, numpy and the manifest; torch and tunekit cannot be imported."""
    out = built[0]
    x = np.random.default_rng(5).standard_normal((1, 3, 48, 48), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", _reference(x))
    script = textwrap.dedent(f"""
        import importlib.abc, json, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "tunekit", "onnx"):
                    raise ImportError(f"{{name}} is not available in this deployment")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import tvm.runtime
        from tvm.runtime.vm import VirtualMachine
        out = {str(out)!r}
        entry = next(e for e in json.load(open(out + "/manifest.json"))["artifacts"] if e["resolution"] == [48, 48])
        vm = VirtualMachine(tvm.runtime.load_module(out + "/" + entry["file"]), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(np.load({str(tmp_path / "x.npy")!r}))).numpy()
        np.testing.assert_allclose(got, np.load({str(tmp_path / "want.npy")!r}), rtol=1e-4, atol=1e-4)
        assert not any(m.split(".")[0] in ("torch", "tunekit") for m in sys.modules)
        print("ok", got.shape)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok (1, 10)" in done.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: cannot compile CUDA here")
def test_cuda_sm90_builds_without_a_gpu(cli, tmp_path):
    result = cli("build", "--model", "tinyconv", "--res", "32", "--target", "cuda-sm90", "--out", tmp_path / "cuda",
                 "--db", tmp_path / "none.db")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((tmp_path / "cuda" / "manifest.json").read_text())["artifacts"]
    assert entry["target"]["arch"] == "sm_90" and entry["fallback"] == 6
    lib = tmp_path / "cuda" / entry["file"]
    assert lib.stat().st_size > 10_000
    if has_cuda():
        assert entry["verification"] == "verified"
    else:
        assert entry["verification"] == "not verified: no GPU" and "not verified: no GPU" in result.output
        with pytest.raises(ArtifactError, match="built for CUDA .* no usable GPU"):
            tunekit.load(lib)


def test_bad_build_inputs(cli, tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    result = cli("build", "--model", "tinyconv", "--res", "32", "--out", afile)
    assert result.exit_code == 2 and "is a file" in result.output
    other = tmp_path / "exports"
    other.mkdir()
    (other / "manifest.json").write_text('{"kind": "tunekit-onnx-export"}')
    result = cli("build", "--model", "tinyconv", "--res", "32", "--out", other)
    assert result.exit_code == 2 and "not tunekit's artifact manifest" in result.output
    result = cli("build", "--model", "tinyconv", "--res", "32", "--target", "nope", "--out", tmp_path / "o")
    assert result.exit_code == 2
    with pytest.raises(ArtifactError, match="no manifest.json"):
        tunekit.load_bundle(tmp_path)


THREADS_PROBE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tunekit, tvm
    before = sorted(os.sched_getaffinity(0))
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else None
    net = tunekit.load(sys.argv[1], threads=threads)
    net.run(np.zeros(net.input["shape"], np.float32))
    print(json.dumps({"threads": net.threads, "pool": tvm.get_global_func("runtime.NumThreads")(),
                      "before": before, "after": sorted(os.sched_getaffinity(0))}))
""")


@pytest.mark.parametrize("threads", [None, 1])
def test_loaded_artifact_runs_on_the_target_threads_and_leaves_affinity(built, tmp_path, threads):
    """TVM alone would take half the logical CPUs and pin the caller to one core; load must do neither."""
    import os

    out, _ = built
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    args = [sys.executable, "-c", THREADS_PROBE, str(out / "tinyconv-32x32-b1.host.so")]
    probe = subprocess.run(args + ([str(threads)] if threads else []), capture_output=True, text=True, env=env,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    entry = json.loads((out / "manifest.json").read_text())["artifacts"][0]
    want = threads or min(entry["threads"], len(os.sched_getaffinity(0)))
    assert got["threads"] == got["pool"] == want
    assert got["after"] == got["before"]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_default_schedules_follow_the_vector_isa(layout):
    """Full vectors for the ISA (16 lanes on AVX-512, 8 on AVX2), and a register block that fits its register
    file: in NHWC two vectors of output channels times a block of pixels, in NCHW a vector of the row times
    a block of channels within half the registers."""
    from tunekit import fallback, frontend
    from tunekit.keys import Key
    from tunekit.targets import resolve_target

    graph = frontend.onnx_graph(Key("tinyconv", 64, 64), model="tinyconv")
    isas = {}
    for mcpu, isa in (("znver4", "avx512"), ("haswell", "avx2"), ("znver1", "avx2")):
        target = resolve_target(json.dumps({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})).tvm_target()
        assert fallback.vector_isa(target).name == isa
        isas[mcpu] = fallback.vector_isa(target)
        tasks, _ = frontend.tasks_of(graph, target, layout)
        convs = [t for t in tasks if "conv2d" in t.name]
        assert len(convs) == 3
        widths = []
        for conv in convs:
            spaces, _ = fallback.design_spaces(conv.mod, target, conv.name)
            blockings = fallback.reuse_axes(conv.mod)
            assert [b.weight_vectors for b in blockings.values()] == [layout == "NHWC"]
            decisions = fallback.heuristic_decisions(spaces[0].trace, isas[mcpu], blockings)
            tiles = [d for inst, d in decisions.items() if inst.kind.name == "SamplePerfectTile" and len(d) == 4]
            vector = tiles[-1][-1]  # the innermost tile of the last spatial loop: C of NHWC, W of NCHW
            block = max(t[-1] for t in tiles[:-1])  # the register block: pixels (NHWC) or channels (NCHW)
            if layout == "NHWC":
                vectors = vector // isas[mcpu].lanes
                assert vector % isas[mcpu].lanes == 0 and vectors in (1, 2)
                assert vectors * block + vectors + 1 <= isas[mcpu].registers  # accumulators, weights, a broadcast
                widths.append(vectors)
            else:
                assert vector <= isas[mcpu].lanes and block <= isas[mcpu].channel_block
                assert vector * block <= isas[mcpu].lanes * isas[mcpu].registers // 2
        if layout == "NHWC":  # 16 output channels: one vector on AVX-512; 32: two
            assert sorted(widths) == ([1, 2, 2] if isa == "avx512" else [2, 2, 2]), widths
    assert (isas["znver4"].lanes, isas["haswell"].lanes) == (16, 8)


@pytest.mark.parametrize("layout,winograd", [("NHWC", True), ("NHWC", False), ("NCHW", False)])
def test_weights_are_stored_in_the_order_the_kernels_read_them(layout, winograd):
    """Every convolution and matmul may repack its weights (and bias), whatever weight-only computation feeds
    them: NHWC's transpose to HWIO and Winograd's kernel transform too, not only a weight parameter itself
    (TVM's own marking missed those: NHWC kernels read HWIO weights 2 KB apart). The image never; and the
    default schedule does repack them (a layout-rewrite block, run once at build time)."""
    from tunekit import fallback, frontend
    from tunekit.keys import Key
    from tunekit.targets import resolve_target

    target = resolve_target("host").tvm_target()
    graph = frontend.onnx_graph(Key("tinyconv", 32, 32), model="tinyconv")
    tasks, _ = frontend.tasks_of(graph, target, layout, winograd)
    heavy = [t for t in tasks if "conv2d" in t.name or "matmul" in t.name]
    assert len(heavy) == 4 and sum("winograd" in t.name for t in heavy) == (2 if winograd else 0)
    for task in heavy:
        assert list(task.mod["main"].attrs["layout_free_buffers"]) == [1, 2], task.name  # weights, bias
        assert "layout_rewrite_preproc" in fallback.cpu_schedule(task.mod, target, task.name).mod.script()
    for task in tasks:
        if task not in heavy:
            assert 0 not in list(task.mod["main"].attrs.get("layout_free_buffers", [])), task.name


def test_an_avx2_build_runs_and_verifies_here(cli, tmp_path):
    """The i7-4790k / tr-2990wx class: AVX2 code built and verified on whatever x86 host this is."""
    out = tmp_path / "avx2"
    result = cli("build", "--model", "tinyconv", "--res", "32", "--out", out, "--db", tmp_path / "n.db",
                 "--target", '{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}')
    assert result.exit_code == 0, result.output
    assert "max |err|" in result.output
    # load's ISA check looks at instruction sets only, not LLVM's scheduling hints (fast-*, false-deps-*)
    net = tunekit.load(out)
    assert net.run(np.zeros(net.input["shape"], np.float32)).shape == (1, 10)
