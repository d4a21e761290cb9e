#!/usr/bin/env bash
# The fair-race checks of benchmarks/fairness/README.md: each backend in the race against the same
# backend alone (--isolation-check), resnet18 at 112/224/448 and the two-layer conv model at 56,
# the latter three times over to show that repeated benches of one artifact agree.
# Run on a quiet machine: nothing else on the cores while it measures (about 40 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=benchmarks/fairness
BIN=.venv/bin
$BIN/tunekit bench --model resnet18 --res 112,224,448 --backends untuned,onednn,onnxruntime,openvino \
    --isolation-check --db /nonexistent/none.db --output $OUT/resnet18-isolation.json --output $OUT/resnet18-isolation.md
$BIN/python $OUT/conv2.py /tmp/tunekit-conv2.onnx
$BIN/tunekit build --onnx /tmp/tunekit-conv2.onnx --res 56 --db /nonexistent/none.db --out /tmp/tunekit-conv2-art
for i in 1 2 3; do
    $BIN/tunekit bench --onnx /tmp/tunekit-conv2.onnx --res 56 --artifacts /tmp/tunekit-conv2-art \
        --backends tuned,onnxruntime,openvino --isolation-check \
        --output $OUT/conv2-isolation-$i.json --output $OUT/conv2-isolation-$i.md
done
