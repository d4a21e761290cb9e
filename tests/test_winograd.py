"""Winograd convolutions: which convolutions take it, and that built libraries still match PyTorch."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import tunekit
from tunekit import winograd
from tunekit.export import torch_to_onnx
from tunekit.keys import Key


class ThreeByThree(nn.Module):
    """Two 3x3 stride-1 convolutions (Winograd) then a stride-2 one (direct), 64 channels, ReLUs between."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 64, 3, 1, 1)
        self.b = nn.Conv2d(64, 64, 3, 1, 1)
        self.c = nn.Conv2d(64, 64, 3, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_tile_size_follows_the_output_map():
    assert winograd.tile_size(56, 56) == 4 and winograd.tile_size(28, 28) == 4
    assert winograd.tile_size(14, 14) == 2  # 4x4 tiles would compute 16x16
    assert winograd.tile_size(7, 7) is None and winograd.tile_size(4, 4) is None  # too few tiles: direct


@pytest.mark.parametrize("side,tile", [(28, 4), (14, 2), (7, None)])
def test_prepare_uses_winograd_where_it_pays(side, tile):
    from tunekit import frontend
    from tunekit.targets import detect_host

    target = detect_host().tvm_target()
    mod, _ = frontend.to_relax(torch_to_onnx(ThreeByThree().eval(), Key("threebythree", side, side)))
    names = [gv.name_hint for gv in frontend.prepare(mod, target).functions]
    expected = f"conv2d_winograd{tile}" if tile else None
    assert sum("winograd" in n and "kernel" not in n for n in names) == (2 if tile else 0), names
    if expected:
        assert any(expected in n for n in names), names
    # NCHW and an explicit "no" keep every convolution direct
    for layout, wino in (("NCHW", False), ("NHWC", False)):
        names = [gv.name_hint for gv in frontend.prepare(mod, target, layout, wino).functions]
        assert not any("winograd" in n for n in names), (layout, names)


@pytest.mark.parametrize("side", [28, 14])
def test_a_winograd_build_matches_pytorch(cli, tmp_path, side):
    """Build verifies the library against the ONNX graph (within 1e-3 + 1e-3 max|ref|); here it is also held
    to float64 PyTorch. Measured max error relative to max|ref|: ~1e-6 for F(4x4) and F(2x2), on a par with
    direct convolution's reordered sums."""
    onnx_file = tmp_path / "c.onnx"
    model = ThreeByThree().eval()
    import onnx

    onnx.save(torch_to_onnx(model, Key("threebythree", side, side)), onnx_file)
    out = tmp_path / "art"
    result = cli("build", "--onnx", onnx_file, "--res", side, "--db", tmp_path / "none.db", "--out", out)
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert entry["winograd"] is True and entry["verification"] == "verified"
    x = np.random.default_rng(1).standard_normal((1, 3, side, side)).astype(np.float32)
    got = tunekit.load(out).run(x)
    with torch.no_grad():
        want = model.double()(torch.from_numpy(x).double()).numpy()
    rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    assert rel < 1e-5, rel


def test_a_preset_can_turn_winograd_off_and_must_not_ask_it_in_nchw(cli, tmp_path):
    from tunekit.errors import SpecError
    from tunekit.targets import TargetSpec, detect_host

    host = detect_host()
    assert host.conv_winograd is True
    assert TargetSpec("h", host.tvm, winograd=False).conv_winograd is False
    assert TargetSpec("h", host.tvm, layout="NCHW").conv_winograd is False
    with pytest.raises(SpecError, match="winograd needs the NHWC layout"):
        TargetSpec("h", host.tvm, layout="NCHW", winograd=True)
    preset = tmp_path / "bad.json"
    preset.write_text(json.dumps({"name": "bad", "tvm": host.tvm, "winograd": "yes"}))
    result = cli("build", "--model", "tinyconv", "--res", "32", "--target", preset, "--db", tmp_path / "n.db",
                 "--out", tmp_path / "o")
    assert result.exit_code == 2 and "winograd must be true or false" in result.output
