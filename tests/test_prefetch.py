"""Weight prefetch (tunekit.prefetch): real TVM schedules, lowering and builds, checked against NumPy."""

import numpy as np
import pytest

from tunekit import prefetch
from tunekit.targets import resolve_target

# A layer as MetaSchedule's CPU kernels stream their weights, small: out = relu(x @ w + b) with the 1 MiB of
# weights prepacked per task (4 tasks of 64 output columns, w[task, k, column]), the accumulators a 1 KB
# buffer each task allocates, the reduction loop reading 64 floats (a quarter KB) of weights a step.
KERNEL = """
@T.prim_func
def main(x: T.Buffer((4, {k}), "float32"), w: T.Buffer((4, {k}, 64), "float32"), b: T.Buffer((256,), "float32"),
         out: T.Buffer((4, 256), "float32")):
    T.func_attr({{"tir.noalias": True, "global_symbol": "main"}})
    for task in T.parallel(4):
        acc = T.decl_buffer((4, 64), "float32")
        for i in range(4):
            for j in T.vectorized(64):
                acc[i, j] = T.float32(0)
        for k in range({k}):
            for i in range(4):
                for j in T.vectorized(64):
                    acc[i, j] = acc[i, j] + x[i, k] * w[task, k, j]
        for i in range(4):
            for j in T.vectorized(64):
                out[i, task * 64 + j] = T.max(acc[i, j] + b[task * 64 + j], T.float32(0))
"""


# The same with a 3x3 window as a stride-2 convolution reads it: each step of k reads a 2.3 KB block of
# weights (36 lines) in loops of 3 too short to prefetch from.
WINDOW = """
@T.prim_func
def main(x: T.Buffer((4, {k}, 3, 3), "float32"), w: T.Buffer((4, {k}, 3, 3, 64), "float32"),
         out: T.Buffer((4, 256), "float32")):
    T.func_attr({{"tir.noalias": True, "global_symbol": "main"}})
    for task in T.parallel(4):
        acc = T.decl_buffer((4, 64), "float32")
        for i in range(4):
            for j in T.vectorized(64):
                acc[i, j] = T.float32(0)
        for k in range({k}):
            for ry in range(3):
                for rx in range(3):
                    for i in range(4):
                        for j in T.vectorized(64):
                            acc[i, j] = acc[i, j] + x[i, k, ry, rx] * w[task, k, ry, rx, j]
        for i in range(4):
            for j in T.vectorized(64):
                out[i, task * 64 + j] = acc[i, j]
"""


def _lowered(func, target):
    import tvm

    return prefetch.lowered(tvm.IRModule({"main": func}), target)


def _kernel(k, source=KERNEL):
    import tvm
    from tvm.script import tirx as T

    return tvm.script.from_source(source.format(k=k), extra_vars={"T": T})


def _run(lib, k):
    import tvm

    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype("float32") for s in [(4, k), (4, k, 64), (256,)])
    out = tvm.runtime.tensor(np.zeros((4, 256), "float32"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), tvm.runtime.tensor(b), out)
    want = np.maximum(x @ w.transpose(1, 0, 2).reshape(k, 256) + b, 0)
    return out.numpy(), want


def _ll(lib):
    return (lib if hasattr(lib, "inspect_source") else lib.mod).inspect_source("ll")


@pytest.fixture(scope="module")
def target():
    return resolve_target("host").tvm_target()


def test_a_large_weight_stream_is_prefetched_ahead_with_the_accumulators_on_the_stack(target):
    import tvm

    func = _kernel(1024)  # 1 MiB of weights
    changed = prefetch.prefetch_weights(_lowered(func, target))[1]
    assert changed == ["k (x1024, 4 lines a step)"]  # 64 floats a step: 4 cache lines

    plain = tvm.tirx.build(func, target=target)
    fetched = tvm.tirx.build(func, target=target, pipeline=prefetch.register_pipeline())
    for lib in (plain, fetched):
        got, want = _run(lib, 1024)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert "@llvm.prefetch" in _ll(fetched) and "@llvm.prefetch" not in _ll(plain)
    workspaces = [_ll(lib).count("load ptr, ptr @__TVMBackendAllocWorkspace") for lib in (plain, fetched)]
    assert workspaces == [1, 0]  # TVM gives the 1 KB accumulators a workspace block; prefetched, the stack


@pytest.mark.parametrize("flop_per_byte, hint", [(None, 3), (2, 0), (prefetch.MAX_NTA_FLOP_PER_BYTE, 3)])
def test_the_cache_hint_follows_the_kernels_flops_per_weight_byte(target, flop_per_byte, hint):
    """A kernel doing little arithmetic per weight byte (as stage 4 at 112) streams its weights past the
    caches (locality 0); one that re-reads them, or whose FLOPs are not known, keeps them (3)."""
    import re

    import tvm

    func = _kernel(1024)
    if flop_per_byte is not None:
        func = func.with_attr(prefetch.FLOPS_ATTR, float(flop_per_byte * (1 << 20)))
    lib = tvm.tirx.build(func, target=target, pipeline=prefetch.register_pipeline())
    hints = re.findall(r"call void @llvm\.prefetch\.p0\(ptr [^,]+, i32 0, i32 (\d), i32 1\)", _ll(lib))
    assert hints and set(hints) == {str(hint)}
    got, want = _run(lib, 1024)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_a_block_too_large_for_one_step_is_prefetched_across_the_loops_inside(target):
    import tvm

    k = 128  # 1.1 MiB of weights
    func = _kernel(k, WINDOW)
    changed = prefetch.prefetch_weights(_lowered(func, target))[1]
    assert changed == ["k (x128, 36 lines a step, 1 in each of 36 inner iterations)"]
    lib = tvm.tirx.build(func, target=target, pipeline=prefetch.register_pipeline())
    assert "@llvm.prefetch" in _ll(lib)
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((4, k, 3, 3)).astype("float32"), rng.standard_normal((4, k, 3, 3, 64)).astype("float32")
    out = tvm.runtime.tensor(np.zeros((4, 256), "float32"))
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w), out)
    want = np.einsum("ikab,tkabj->itj", x, w).reshape(4, 256)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-3)


def test_weights_that_stay_in_cache_are_left_alone(target):
    assert prefetch.prefetch_weights(_lowered(_kernel(512), target))[1] == []  # 0.5 MiB


def test_tinyconv_schedules_replayed_with_per_task_accumulators_compute_the_same(target):
    """The schedule side on real MetaSchedule traces: each conv and matmul of tinyconv, its default schedule
    replayed with the output cached per task, built and run against the schedule as it was."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from tunekit import fallback, frontend
    from tunekit.keys import Key

    spec = resolve_target("host")
    tasks, _ = frontend.tasks_of(frontend.onnx_graph(Key("tinyconv", 32, 32), model="tinyconv"), target,
                                 spec.conv_layout, spec.conv_winograd)
    strip = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)
    replayed = 0
    for task in tasks:
        sch = fallback.cpu_schedule(task.mod, target, task.name)
        cached = prefetch.accumulate_per_task(task.mod, sch.trace, task.name, target) if sch else None
        if cached is None:
            continue
        replayed += 1
        assert any(b.name_hint.endswith("_global") for b in _blocks(cached.mod["main"]))  # the write-back cache
        info = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)  # the arguments as built
        mods = [strip(sch.mod), strip(cached.mod)]  # as tune's builder builds them
        rng = np.random.default_rng(5)
        inputs = [rng.standard_normal([int(d) for d in a.shape]).astype("float32") for a in info]
        outputs = []
        for mod in mods:
            args = [tvm.runtime.tensor(a) for a in inputs]
            tvm.tirx.build(mod, target=target)["main"](*args)
            outputs.append(args[-1].numpy())
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5, err_msg=task.name)
    assert replayed >= 2  # the 3x3 convolution and the classifier's matmul


def _blocks(func):
    return prefetch._nodes(func.body, "SBlock")


def test_the_target_says_whether_to_prefetch():
    from tunekit.errors import SpecError
    from tunekit.targets import TargetSpec

    cpu = {"kind": "llvm", "mcpu": "znver4"}
    assert TargetSpec("a", cpu).weight_prefetch and not TargetSpec("b", cpu, prefetch=False).weight_prefetch
    assert not TargetSpec("c", {"kind": "cuda", "arch": "sm_90"}).weight_prefetch
    with pytest.raises(SpecError, match="prefetch must be true or false"):
        TargetSpec("d", cpu, prefetch="yes")
