"""Training a scale model for a bundle: the reference paper's recipe for dynamic resolution.

Every image of a labelled folder runs through the bundle at each resolution; its label for the scale
model is the oracle's choice, the smallest resolution at which the backbone is right (the largest
when none is). A small MobileNetV2-style network (inverted residual blocks: 1x1 expand, 3x3
depthwise, 1x1 project) reads the image resized to its own low side and learns to predict that
index. It is exported to ONNX with the bundle's resolutions in its metadata, ready for
``load_bundle(..., policy="scale", scale_model=path)``, which refuses it for a bundle with other
resolutions.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tunekit.errors import SpecError
from tunekit.scale import RESOLUTIONS_KEY



def scale_net(outputs: int, width: int = 16):
    """A MobileNetV2-style classifier: a strided 3x3 stem, four inverted residual blocks, global pooling."""
    import torch.nn as nn

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand=4):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    w = width
    return nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU6(),
                         Inverted(w, w, 1), Inverted(w, 2 * w, 2), Inverted(2 * w, 2 * w, 1),
                         Inverted(2 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4 * w, outputs))


@dataclass
class Trained:
    """What training did: where the model went, its labels and how its routing does on held-out images."""

    path: Path
    side: int
    resolutions: list[list[int]]
    label_counts: dict[str, int]  # images per oracle resolution, "HxW" -> count
    epoch: int  # the epoch kept
    held_out: int  # images held out (0: the last epoch is kept, nothing is reported)
    routed: dict | None  # on the held-out images: accuracy and backbone mean ms of the scale model's routing,
    largest: dict | None  # of the largest resolution,
    oracle: dict | None  # and of the oracle


def oracle_labels(directory: str | Path, items: list[tuple[Path, int]], model: str | None = None,
                  on_image: Callable[[], None] | None = None):
    """(bundle resolutions, each image's oracle index, the images as loaded, right: images x resolutions
    bool, ms: images x resolutions)."""
    from tunekit.evaluate import at_each_resolution, load_image, single_resolutions, smallest_right
    from tunekit.runtime import load_bundle

    bundle = load_bundle(directory, model)
    singles = single_resolutions(bundle)
    labels, images, right, ms = [], [], [], []
    for path, label in items:
        image = load_image(path)
        right_at = at_each_resolution(singles, image, label)
        labels.append(smallest_right(right_at))
        right.append([r for r, _ in right_at])
        ms.append([t for _, t in right_at])
        images.append(image)
        if on_image:
            on_image()
    return bundle.resolutions, np.array(labels), images, np.array(right), np.array(ms)


def train(directory: str | Path, data: str | Path, out: str | Path, side: int | None = None, epochs: int = 30,
          width: int = 16, val_fraction: float = 0.2, seed: int = 0, model: str | None = None,
          labels: str | Path | None = None, on_image: Callable[[], None] | None = None,
          on_epoch: Callable[[int, float, dict | None], None] | None = None, folder: tuple | None = None) -> Trained:
    """Label ``data`` with the bundle's oracle, train the scale model on it at ``side`` px (default: the
    bundle's smallest side) and write it to ``out`` as ONNX. ``on_image`` is called after each image is
    labelled, ``on_epoch(epoch, loss, routed)`` after each epoch (``routed``: accuracy and backbone mean ms
    of its routing on the held-out images). ``folder`` is ``read_folder(data, labels)`` when the caller has
    read it already.

    The labels are noisy: a backbone right by luck at a low resolution labels an image that the scale
    model cannot tell from others that need a high one, and a small network memorises such labels.
    So the epoch kept is the one whose routing of the held-out images is the most accurate (then the
    fastest), which is what the policy is for; with no images held out, the last."""
    import torch

    from tunekit.evaluate import read_folder
    from tunekit.runtime import resize_and_crop

    if not 0 <= val_fraction < 1:
        raise SpecError(f"--val-fraction {val_fraction}: expected 0 <= fraction < 1")
    if Path(out).suffix != ".onnx":
        raise SpecError(f"--out {out}: name a .onnx file")
    _, items = folder or read_folder(data, labels)
    resolutions, targets, images, right, ms = oracle_labels(directory, items, model, on_image)
    side = side or min(min(r) for r in resolutions)
    x = torch.from_numpy(np.concatenate([resize_and_crop(image, side, side) for image in images]))
    y = torch.from_numpy(targets)
    order = np.random.default_rng(seed).permutation(len(y))
    held = order[:int(round(val_fraction * len(y)))]
    fit = torch.from_numpy(order[len(held):])
    if len(fit) == 0:
        raise SpecError(f"--data {data}: too few images to train on ({len(y)}, {len(held)} held out)")

    def routing(picks):
        return {"accuracy": float(right[held, picks].mean()), "mean_ms": float(ms[held, picks].mean())}

    torch.manual_seed(seed)
    net = scale_net(len(resolutions), width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    generator = torch.Generator().manual_seed(seed)
    best = (None, None, epochs)  # (routed on the held-out images, weights, epoch)
    for epoch in range(1, epochs + 1):
        net.train()
        total = 0.0
        for batch in fit[torch.randperm(len(fit), generator=generator)].split(64):
            inputs = x[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            inputs = torch.where(flip[:, None, None, None], inputs.flip(3), inputs)
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(inputs), y[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        schedule.step()
        routed = routing(_picks(net, x[torch.from_numpy(held)])) if len(held) else None
        if routed and (best[0] is None or (routed["accuracy"], -routed["mean_ms"])
                       > (best[0]["accuracy"], -best[0]["mean_ms"])):
            best = (routed, copy.deepcopy(net.state_dict()), epoch)
        if on_epoch:
            on_epoch(epoch, total / len(fit), routed)
    if best[1] is not None:
        net.load_state_dict(best[1])
    net.eval()
    _export(net, side, resolutions, Path(out))
    counts = np.bincount(targets, minlength=len(resolutions))
    top = np.full(len(held), len(resolutions) - 1)
    return Trained(Path(out), side, [list(r) for r in resolutions],
                   {f"{h}x{w}": int(c) for (h, w), c in zip(resolutions, counts)}, best[2], len(held),
                   best[0], routing(top) if len(held) else None, routing(targets[held]) if len(held) else None)


def _picks(net, x) -> np.ndarray:
    import torch

    net.eval()
    with torch.no_grad():
        return torch.cat([net(chunk) for chunk in x.split(256)]).argmax(1).numpy()


def _export(net, side: int, resolutions, out: Path) -> None:
    import onnx
    import torch

    from tunekit.common import native_stderr_to

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(out.name + ".partial")
    with native_stderr_to(Path("/dev/null")):
        torch.onnx.export(net, torch.zeros(1, 3, side, side), str(scratch), input_names=["image"],
                          output_names=["scores"], dynamo=False)
    graph = onnx.load(str(scratch))
    entry = graph.metadata_props.add()
    entry.key, entry.value = RESOLUTIONS_KEY, json.dumps([list(r) for r in resolutions])
    onnx.save(graph, str(scratch))
    scratch.replace(out)  # whole or not at all

