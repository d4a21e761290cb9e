"""This machine's practical fp32 peak, measured once per host and thread count, and cached.

'% of peak' needs a peak. A nominal one (cores x clock x FLOP/cycle) needs the
top clock, which VMs rarely report, and was beaten by ONNX Runtime on boost
clocks here. So the peak is measured: the best of several 2048^3 fp32 matrix
products on the bench's threads, by ONNX Runtime's MatMul (MLAS, which uses
AVX-512 where the CPU has it) or, without ONNX Runtime, torch.mm (whose MKL
runs AVX2 code on AMD CPUs: a lower bound there). It runs in a fresh process,
away from any thread pool of the caller. The cache is
``$XDG_CACHE_HOME/tunekit/peak.json`` (``~/.cache`` by default), keyed by CPU
model, LLVM mcpu, threads and boot: a VM of the same CPU model can be another machine
after a reboot (one measured 345 GFLOP/s, the next 386 under the same name), so a peak
is measured again once per boot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

N = 2048


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunekit" / "peak.json"


def _matmul_gflops(threads: int) -> tuple[float, str]:
    """Best GFLOP/s of N^3 fp32 matmuls, in this process."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((N, N), dtype=np.float32)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        # B as a constant: MLAS prepacks it once, as it does a convolution's weights
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [N, N])],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [N, N])],
                                  [numpy_helper.from_array(a, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # readable by every ONNX Runtime of the last years
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        call, how = (lambda: session.run(None, {"a": a})), f"ONNX Runtime {ort.__version__} MatMul"
    except ImportError:
        import torch

        torch.set_num_threads(threads)
        t = torch.from_numpy(a)
        call, how = (lambda: torch.mm(t, t)), f"torch {torch.__version__} mm (MKL; AVX2 only on AMD)"
    for _ in range(3):
        call()
    best = min(_timed(call) for _ in range(25))  # best of many: a shared host is rarely quiet for long
    return 2 * N ** 3 / best / 1e9, f"{how}, {N}^3 fp32, {threads} threads, best of 25"


def _timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def measured_peak(threads: int, refresh: bool = False) -> dict:
    """``{"gflops": ..., "how": ..., "cpu": ..., "mcpu": ..., "measured": date}`` for this host.

    Cached per host; ``refresh`` measures again.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import psutil
    from tvm.target import codegen

    from tunekit.targets import cpu_info

    cpu, mcpu = cpu_info()["model"], str(codegen.llvm_get_system_cpu())
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    host = f"{cpu}|{mcpu}|{threads}|"
    key = f"{host}boot {int(psutil.boot_time())}"
    if not refresh and key in cache:
        return cache[key]
    runs = []
    for _ in range(3):  # the best of three fresh processes: one process is one sample
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            runs.append(pool.submit(_matmul_gflops, threads).result())
    gflops, how = max(runs)
    how += ", best of 3 processes"
    cache = {k: v for k, v in cache.items() if not k.startswith(host)}  # this host's earlier boots
    cache[key] = {"gflops": round(gflops, 1), "how": how, "cpu": cpu, "mcpu": mcpu,
                  "measured": time.strftime("%Y-%m-%d")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from tunekit.common import write_json

        write_json(path, cache)
    except OSError:  # a read-only home: measure again next time
        pass
    return cache[key]
