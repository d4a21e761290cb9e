"""Export round trips: every zoo model at a small resolution, user ONNX specialisation, weights."""

import json

import numpy as np
import onnx
import pytest
import torch

from tunekit import onnxutil
from tunekit.errors import ExportError, OnnxModelError, TunekitError
from tunekit.export import export_onnx, export_zoo
from tunekit.models import MODELS, create_model
from tunekit.common import sha256


@pytest.mark.parametrize("name, side", [("resnet18", 64), ("resnet50", 64), ("mobilenet_v2", 64),
                                        ("vit_s16", 64), ("tinyconv", 32)])
def test_zoo_round_trip(tmp_path, name, side):
    (result,) = export_zoo(name, [side], tmp_path)
    assert result.path.name == f"{name}-{side}x{side}-b1.onnx"
    assert result.max_abs_diff <= result.tolerance
    model = onnx.load(str(result.path))
    assert onnxutil.image_input(model).shape == (1, 3, side, side)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = manifest["exports"]
    assert entry["sha256"] == sha256(result.path)
    assert entry["inputs"][0] == {"name": "input", "shape": [1, 3, side, side], "dtype": "float32"}
    assert entry["outputs"][0]["shape"][0] == 1
    assert manifest["opset"] == 17


def test_vit_interpolates_position_embeddings():
    model = create_model("vit_s16")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 320, 320))  # 20x20 tokens instead of 14x14
    assert out.shape == (1, 1000)
    assert model.pos_embed_for(20, 20).shape == (1, 401, 384)


def test_manifest_merges_and_batch(tmp_path):
    export_zoo("tinyconv", [32], tmp_path)
    export_zoo("tinyconv", [48], tmp_path, batch=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["key"] for e in manifest["exports"]] == ["tinyconv-32x32-b1", "tinyconv-48x48-b2"]


def _dynamic_onnx(path, dynamic=True):
    model = create_model("tinyconv")
    axes = {"input": {0: "n", 2: "h", 3: "w"}} if dynamic else None
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes=axes)
    return model


def test_onnx_specialisation(tmp_path):
    src = tmp_path / "My-Net.onnx"
    torch_model = _dynamic_onnx(src)
    results = export_onnx(src, [40, 64], tmp_path / "out")
    assert [r.path.name for r in results] == ["my_net-40x40-b1.onnx", "my_net-64x64-b1.onnx"]
    for r in results:
        spec = onnx.load(str(r.path))
        assert onnxutil.image_input(spec).shape == (1, 3, r.key.height, r.key.width)
        # the specialised graph still computes the PyTorch model
        x = np.random.default_rng(1).standard_normal((1, 3, r.key.height, r.key.width), dtype=np.float32)
        with torch.no_grad():
            want = torch_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(onnxutil.run(r.path, {"input": x})[0], want, rtol=1e-4, atol=1e-4)


def test_fixed_onnx_accepts_only_its_size(tmp_path):
    src = tmp_path / "fixed.onnx"
    _dynamic_onnx(src, dynamic=False)
    (ok,) = export_onnx(src, [32], tmp_path / "out")
    assert ok.max_abs_diff <= ok.tolerance
    with pytest.raises(OnnxModelError, match="fixed height of 32; this model accepts only 32x32"):
        export_onnx(src, [64], tmp_path / "out")


def test_bad_onnx_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        export_onnx(junk, [32], tmp_path / "out")
    with pytest.raises(OnnxModelError, match="not found"):
        export_onnx(tmp_path / "missing.onnx", [32], tmp_path / "out")


def test_weights_round_trip(tmp_path):
    donor = create_model("tinyconv", seed=123)
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    loaded = create_model("tinyconv", weights=tmp_path / "w.pt")
    for k, v in donor.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not torch.equal(create_model("tinyconv").conv1.weight, donor.conv1.weight)
    torch.save(create_model("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(TunekitError, match="do not fit tinyconv"):
        create_model("tinyconv", weights=tmp_path / "r18.pt")


def test_mismatch_is_caught(tmp_path, monkeypatch):
    """The reference check can fail: a runtime that returns wrong numbers is reported."""
    real_run = onnxutil.run
    monkeypatch.setattr(onnxutil, "run", lambda m, i: [real_run(m, i)[0] + 1.0])
    with pytest.raises(ExportError, match="differs from reference by 1"):
        export_zoo("tinyconv", [32], tmp_path)


def test_zoo_names_are_listed():
    assert set(MODELS) >= {"resnet18", "resnet50", "mobilenet_v2", "vit_s16"}


class SamePadConv(torch.nn.Module):
    """TF-style "same" padding computed from the input's shape, as popular model libraries export it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        ih, iw = x.shape[2], x.shape[3]
        ph = ((ih + 1) // 2 - 1) * 2 + 3 - ih  # (ceil(ih / 2) - 1) * stride + kernel - ih
        pw = ((iw + 1) // 2 - 1) * 2 + 3 - iw
        x = torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return self.head(torch.relu(self.conv(x))).mean((2, 3))


def test_shape_computed_padding_is_folded_and_builds(cli, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "samepad.onnx"
    torch.onnx.export(SamePadConv().eval(), torch.randn(1, 3, 32, 32), str(path), dynamo=False,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {2: "h", 3: "w"}})
    original = onnx.load(str(path))
    assert any(n.op_type == "Shape" for n in original.graph.node)  # the pads really come from the shape
    folded = onnxutil.specialise(original, 1, 33, 33)
    assert not any(n.op_type in ("Shape", "Size") for n in folded.graph.node)
    result = cli("build", "--onnx", path, "--res", "32,33", "--out", tmp_path / "art", "--db", tmp_path / "n.db")
    assert result.exit_code == 0, result.output  # before: "Dynamic pads are not supported yet"
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [e["verification"] for e in manifest["artifacts"]] == ["verified", "verified"]
