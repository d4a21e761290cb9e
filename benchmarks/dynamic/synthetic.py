"""A synthetic labelled image set for dynamic resolution, and a small backbone trained on it.

No data set ships with tunekit and none can be downloaded, so the scale-model recipe is shown on
images built so that the resolution an image needs is known by construction:

- four *coarse* classes (a red, green, blue or yellow tint over noise) are told apart at any resolution;
- four *fine* classes (grey with 1-pixel horizontal stripes, vertical stripes, a checkerboard, or
  none) are told apart only at full resolution: bilinear resizing by 1/2 or less averages each
  pair of pixels, so every fine class becomes the same grey.

Images are 64x64 PNGs in one folder per class. ``backbone`` is a small CNN with global average
pooling, trained at 16, 32 and 64 px at once (as resolution-switchable networks are), so one set
of weights serves every resolution of a bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 64
COARSE = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}
FINE = ("hstripes", "vstripes", "checker", "plain")
CLASSES = sorted([*COARSE, *FINE])


def image(name: str, rng: np.random.Generator) -> np.ndarray:
    """One HxWx3 uint8 image of class ``name``."""
    y, x = np.mgrid[:SIDE, :SIDE]
    noise = rng.normal(0, 0.06, (SIDE, SIDE, 3))
    if name in COARSE:
        tint = np.array(COARSE[name], dtype=np.float64)
        strength = rng.uniform(0.15, 0.35)
        rgb = 0.5 + strength * (tint - tint.mean()) + noise
    else:
        pattern = {"hstripes": y % 2, "vstripes": x % 2, "checker": (x + y) % 2,
                   "plain": np.full((SIDE, SIDE), 0.5)}[name]
        amplitude = rng.uniform(0.15, 0.3)
        rgb = 0.5 + amplitude * (2 * pattern[..., None] - 1) * (name != "plain") + noise
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_folder(folder: str | Path, per_class: int, seed: int) -> Path:
    """``per_class`` PNGs of every class under ``folder/<class>/``."""
    from PIL import Image

    folder, rng = Path(folder), np.random.default_rng(seed)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(image(name, rng)).save(folder / name / f"{i:04d}.png")
    return folder


def backbone(width: int = 48):
    import torch.nn as nn

    def conv(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU()]

    return nn.Sequential(*conv(3, width, 1), *conv(width, 2 * width, 2), *conv(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, len(CLASSES)))


def train_backbone(folder: str | Path, sides=(16, 32, 64), width: int = 48, epochs: int = 6, seed: int = 0):
    """The backbone trained on ``folder`` at every side in ``sides`` (inputs resized as tunekit's bundle
    resizes them); returns the torch module in eval mode."""
    import torch

    from tunekit.evaluate import load_image, read_folder
    from tunekit.runtime import resize_and_crop

    torch.manual_seed(seed)
    _, items = read_folder(folder)
    images = np.concatenate([load_image(p) for p, _ in items])
    labels = torch.tensor([label for _, label in items])
    inputs = {s: torch.from_numpy(resize_and_crop(images, s, s)) for s in sides}
    net = backbone(width)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(32):
            optimiser.zero_grad()
            loss = sum(torch.nn.functional.cross_entropy(net(inputs[s][batch]), labels[batch]) for s in sides)
            loss.backward()
            optimiser.step()
    return net.eval()


def export_backbone(net, path: str | Path) -> Path:
    """The backbone as ONNX with dynamic height and width (``tunekit build --onnx`` specialises it)."""
    import torch

    torch.onnx.export(net, torch.zeros(1, 3, SIDE, SIDE), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {2: "height", 3: "width"}}, dynamo=False)
    return Path(path)
