"""The two-layer conv model of the fair-race checks: 1x1 conv 3->64, then 3x3 conv 64->64 (0.23 GFLOP at 56x56).

    python benchmarks/fairness/conv2.py OUT.onnx     # ONNX with dynamic H and W, for `tunekit bench --onnx`
"""

import sys

import torch


class Conv2(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 64, 1)
        self.b = torch.nn.Conv2d(64, 64, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.onnx.export(Conv2().eval(), torch.randn(1, 3, 56, 56), sys.argv[1], dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {2: "h", 3: "w"}, "output": {2: "h", 3: "w"}})
