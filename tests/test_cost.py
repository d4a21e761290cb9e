"""Cost figures against published ones (PAPER.md) and a hand count."""

import pytest

from tunekit.cost import zoo_costs

# Multiply-adds in G. Paper Table I (Yan et al.), given to one decimal.
PAPER_RESNET18 = {112: 0.5, 168: 1.1, 224: 1.8, 280: 2.9, 336: 4.2, 392: 5.8, 448: 7.3}
# Resolution Switchable Networks (Wang et al.), three significant digits.
RSNETS = {
    "resnet18": {224: 1.82, 192: 1.34, 160: 0.931, 128: 0.596, 96: 0.335},
    "resnet50": {224: 4.14, 192: 3.04, 160: 2.11, 128: 1.35, 96: 0.760},
    "mobilenet_v2": {224: 0.301, 192: 0.221, 160: 0.154, 128: 0.099, 96: 0.056},
}


def test_resnet18_across_paper_grid():
    costs = {c.resolution: c.gmacs for c in zoo_costs("resnet18", list(PAPER_RESNET18))}
    for side, published in PAPER_RESNET18.items():
        # within 2%, or within the rounding of a one-decimal figure (0.5 stands for 0.45..0.55)
        assert abs(costs[side] - published) <= max(0.02 * published, 0.05), (side, costs[side])


@pytest.mark.parametrize("model", list(RSNETS))
def test_against_rsnets(model):
    table = RSNETS[model]
    costs = {c.resolution: c for c in zoo_costs(model, list(table))}
    for side, published in table.items():
        assert costs[side].gmacs == pytest.approx(published, rel=0.02), (model, side)
        assert costs[side].gflops == pytest.approx(2 * costs[side].gmacs)


def test_vit_s16_and_known_params():
    (cost,) = zoo_costs("vit_s16", [224])
    assert cost.gmacs == pytest.approx(4.6, rel=0.02)  # timm: vit_small_patch16_224, 4.6 GMACs
    assert cost.params == 22_050_664
    # 160 px: 10x10 tokens; attention falls faster than linearly with tokens
    (small,) = zoo_costs("vit_s16", [160])
    assert small.gmacs < cost.gmacs * (101 / 197)


def test_tinyconv_by_hand():
    (cost,) = zoo_costs("tinyconv", [32])
    conv1 = 16 * 32 * 32 * 3 * 9
    conv2 = 32 * 16 * 16 * 16 * 9
    conv3 = 32 * 16 * 16 * 32 * 9
    fc = 32 * 10
    assert cost.macs == conv1 + conv2 + conv3 + fc
    # the largest op is the ReLU after conv1: 16x32x32 float32 in and out
    assert cost.peak_activation_bytes == 2 * 16 * 32 * 32 * 4
    assert cost.params == 14_666


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "mobilenet_v2", "vit_s16", "tinyconv"])
def test_the_zoo_table_figures_match_the_graph(model):
    """`tunekit models` prints cached figures (it must answer at once); they must be what `flops` counts."""
    from tunekit.models import MODELS

    (cost,) = zoo_costs(model, [224])
    assert MODELS[model].params == cost.params
    assert MODELS[model].gmacs_224 == pytest.approx(cost.gmacs, abs=1e-4)
