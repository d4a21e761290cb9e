"""How close to the measured peak a model can run here at all: a per-layer roofline.

    python benchmarks/roofline.py --model resnet50 --res 112,224,448

Each convolution or matmul of the ONNX graph needs at least its arithmetic at the measured fp32 peak
(``tunekit.peak``, the bench's figure) and at least its weights' trip from memory at the measured read
bandwidth (``torch.sum`` over a buffer far larger than the L3, on the bench's threads) when the model's
weights do not fit in the L3: a run then finds every layer's weights gone. A layer takes the larger of
the two (perfect overlap within the layer; activations assumed in cache, weights not prefetched across
layers), the run the sum over layers. The run's FLOPs at peak over that sum is the most '% of peak'
any backend can show under those assumptions: an upper bound, since everything left out (activation
traffic, the ops between convolutions, the runtime's own calls) only adds time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def read_bandwidth(threads: int, mbytes: int = 512, repeats: int = 15) -> float:
    """Median GB/s of ``torch.sum`` over a float32 buffer of ``mbytes`` MB on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(mbytes * 2**20 // 4, dtype=torch.float32)
    buf.sum()  # touch every page once
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        buf.sum()
        rates.append(buf.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def layers(model: str, side: int) -> list[tuple[str, int, int]]:
    """(name, MACs, weight bytes) of each Conv / Gemm / MatMul of zoo ``model`` at ``side``."""
    from tunekit.cost import _shapes, node_macs
    from tunekit.export import torch_to_onnx
    from tunekit.keys import Key
    from tunekit.models import create_model

    graph = torch_to_onnx(create_model(model), Key(model, side, side, 1))
    shapes = _shapes(graph)
    weights = {i.name for i in graph.graph.initializer}
    return [(node.name, node_macs(node, shapes),
             sum(int(np.prod(shapes[i][0])) * 4 for i in node.input[1:] if i in weights))
            for node in graph.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]


def l3_bytes() -> int | None:
    """The L3's size as Linux reports it for CPU 0 (a VM's figure), or None."""
    try:
        size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def main() -> None:
    from tvm.target import codegen

    from tunekit.peak import measured_peak
    from tunekit.resolutions import sides_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--res", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    peak = measured_peak(args.threads)["gflops"]
    bw = read_bandwidth(args.threads)
    l3 = l3_bytes()
    print(f"host {codegen.llvm_get_system_cpu()}, {args.threads} threads: peak {peak:.1f} GFLOP/s (tunekit.peak), "
          f"read bandwidth {bw:.1f} GB/s (torch.sum over 512 MB, median of 15), L3 "
          + (f"{l3 / 2**20:.0f} MiB" if l3 else "unknown"))
    print("| res | GFLOPs | weights MB | at peak ms | weights' trip ms | roofline ms | best % of peak |")
    print("|---|---|---|---|---|---|---|")
    for side in sides_for(args.res, args.model):
        rows = layers(args.model, side)
        weight_bytes = sum(w for _, _, w in rows)
        cold = l3 is None or weight_bytes > l3  # every run finds the weights gone from the cache
        compute = [2 * m / (peak * 1e9) for _, m, _ in rows]
        memory = [w / (bw * 1e9) if cold else 0.0 for _, _, w in rows]
        bound = sum(max(c, m) for c, m in zip(compute, memory))
        flops = 2 * sum(m for _, m, _ in rows)
        print(f"| {side} | {flops / 1e9:.2f} | {weight_bytes / 1e6:.1f} | {sum(compute) * 1e3:.2f} | "
              f"{sum(memory) * 1e3:.2f} | {bound * 1e3:.2f} | {100 * sum(compute) / bound:.0f}% |")


if __name__ == "__main__":
    main()
