"""Dynamic resolution on the synthetic data set, end to end with the commands a user runs.

    .venv/bin/python benchmarks/dynamic/run.py            # about 3 minutes on 2 cores

Writes a training and a test folder (synthetic.py), trains the backbone at 16, 32 and 64 px, exports
it to ONNX, then: `tunekit build` (16, 32, 64), `tunekit scale-model train` on the training folder,
`tunekit evaluate` on the test folder with the scale, cascade and nearest policies, into
benchmarks/dynamic/synthetic-<LLVM mcpu>-<cores>c.{json,md,png}. Scratch files go to a temporary folder (the
reports name them relative to it).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from tvm.target import codegen

import synthetic

HERE = Path(__file__).resolve().parent
TUNEKIT = str(Path(sys.executable).with_name("tunekit"))


def tunekit(*args, cwd):
    print("$ tunekit", " ".join(map(str, args)), flush=True)
    subprocess.run([TUNEKIT, *map(str, args)], check=True, cwd=cwd)


def main():
    host = f"{codegen.llvm_get_system_cpu()}-{psutil.cpu_count(logical=False)}c"
    out = HERE / f"synthetic-{host}"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        synthetic.write_folder(scratch / "train", per_class=120, seed=0)
        synthetic.write_folder(scratch / "test", per_class=100, seed=1)
        net = synthetic.train_backbone(scratch / "train")
        synthetic.export_backbone(net, scratch / "backbone.onnx")
        tunekit("build", "--onnx", "backbone.onnx", "--res", "16,32,64", "--out", "art", "--db", "none.db", cwd=scratch)
        tunekit("scale-model", "train", "--bundle", "art", "--data", "train", "--out", "scale.onnx", cwd=scratch)
        tunekit("evaluate", "--bundle", "art", "--data", "test", "--policy", "scale:scale.onnx",
                "--policy", "cascade:0.9", "--policy", "cascade:0.99", "--policy", "nearest",
                "--output", f"{out}.json", "--output", f"{out}.md", "--plot", f"{out}.png", cwd=scratch)


if __name__ == "__main__":
    main()
