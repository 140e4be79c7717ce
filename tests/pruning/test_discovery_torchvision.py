"""Discovered layouts of torchvision classification CNNs: the masked dense model equals
the physically sliced compact one, and the analytic FLOPs equal the counted ones.

Models are built with reduced widths/depths where the builder allows it (the same graph
structure with fewer channels) so the property tests stay fast on a CPU.
"""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.models import build_on_meta
from pipeline.pruning.discovery import discover
from pipeline.pruning.exactness import check, random_keep
from pipeline.pruning.flops import FlopsModel, count_flops
from pipeline.pruning.slicing import resize_model

torchvision = pytest.importorskip("torchvision")
SHAPE = (3, 32, 32)


def _resnet(block, **kwargs):
    from torchvision.models import resnet

    return resnet.ResNet(getattr(resnet, block), [1, 1, 1, 1], num_classes=10, **kwargs)


def _vgg16_bn():
    """torchvision's VGG-16-BN features; the 25088 x 4096 classifier narrowed to 32 units
    (same Linear-ReLU-Dropout structure) so the test does not allocate 120 M weights."""
    from torchvision.models import vgg

    with torch.device("meta"):
        model = vgg.vgg16_bn(num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32),
        nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10),
    )  # fmt: skip
    model.to_empty(device="cpu")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def _mobilenet_v3(arch):
    from torchvision.models import mobilenetv3

    setting, last = mobilenetv3._mobilenet_v3_conf(arch, width_mult=0.5)
    return mobilenetv3.MobileNetV3(setting, 64, num_classes=10)


def _efficientnet_b0():
    from torchvision.models import efficientnet

    setting, last = efficientnet._efficientnet_conf(
        "efficientnet_b0", width_mult=0.25, depth_mult=0.34
    )
    return efficientnet.EfficientNet(setting, 0.2, num_classes=10, last_channel=last)


def _regnet_y():
    from torchvision.models import regnet

    params = regnet.BlockParams.from_init_params(
        depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25
    )
    return regnet.RegNet(params, num_classes=10, stem_width=16)


def _convnext():
    from torchvision.models import convnext

    blocks = [convnext.CNBlockConfig(16, 32, 1), convnext.CNBlockConfig(32, None, 1)]
    return convnext.ConvNeXt(blocks, num_classes=10)


BUILDERS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "resnet50": lambda: _resnet("Bottleneck", width_per_group=16),
    "resnext50_32x4d": lambda: _resnet("Bottleneck", groups=8, width_per_group=4),
    "wide_resnet50_2": lambda: _resnet("Bottleneck", width_per_group=32),
    "vgg16_bn": _vgg16_bn,
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
    "mobilenet_v3_small": lambda: _mobilenet_v3("mobilenet_v3_small"),
    "mobilenet_v3_large": lambda: _mobilenet_v3("mobilenet_v3_large"),
    "efficientnet_b0": _efficientnet_b0,
    "regnet_y_400mf": _regnet_y,
    "shufflenet_v2_x1_0": lambda: torchvision.models.shufflenetv2.ShuffleNetV2(
        [1, 1, 1], [8, 16, 32, 64, 128], num_classes=10
    ),
    "densenet121": lambda: torchvision.models.densenet.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10
    ),
    "mnasnet1_0": lambda: torchvision.models.mnasnet.MNASNet(0.25, num_classes=10),
    "convnext_tiny": _convnext,
}


def _randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics, so a misaligned channel changes the output."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


_DENSE: dict = {}


def _dense(name: str):
    """One dense model per name for all examples: (model, discovery, FLOPs model)."""
    if name not in _DENSE:
        torch.manual_seed(0)
        model = BUILDERS[name]().eval()
        _randomise_bn(model, torch.Generator().manual_seed(1))
        found = discover(model, SHAPE)
        _DENSE[name] = (model, found, FlopsModel(model, found.layout, SHAPE))
    return _DENSE[name]


@pytest.mark.parametrize("name", sorted(BUILDERS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_dense_equals_sliced_compact_and_flops_agree(name, seed):
    model, found, flops = _dense(name)
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *SHAPE, generator=generator)
    report = check(model, found.layout, keep, x, flops, scatter=False)
    assert report.holds(tolerance=1e-4), report


# What each model leaves whole, and why (reduced-width builds; docs/discovery.md has the
# real-size table). Prunable groups must exist wherever a BN follows a plain conv.
EXPECTED = {
    # name: (prunable groups, coupled groups, substrings every whole reason contains one of)
    "resnet18": (12, 4, ()),
    "resnet50": (13, 4, ()),
    "resnext50_32x4d": (13, 4, ()),
    "wide_resnet50_2": (13, 4, ()),
    "vgg16_bn": (15, 0, ()),
    "mobilenet_v2": (24, 6, ()),
    "mobilenet_v3_small": (26, 3, ()),
    "mobilenet_v3_large": (30, 6, ()),
    "efficientnet_b0": (27, 4, ()),
    "regnet_y_400mf": (15, 2, ()),
    "shufflenet_v2_x1_0": (5, 0, ("reshapes the channel dimension",)),
    "densenet121": (10, 0, ()),
    "mnasnet1_0": (24, 4, ()),
    "convnext_tiny": (2, 0, ("permute",)),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_what_is_left_whole_is_reported_with_its_reason(name):
    _, found, _ = _dense(name)
    groups, coupled, reasons = EXPECTED[name]
    assert len(found.layout.groups) == groups
    assert sum(g.coupled for g in found.layout.groups.values()) == coupled
    assert bool(found.whole) == bool(reasons)
    for module, reason in found.whole:
        assert any(r in reason for r in reasons), (module, reason)
    wired = {w.module for w in found.layout.layers}
    fixed = {w.module for w in found.layout.layers if w.out_group is None}
    assert {module for module, _ in found.whole} <= wired & fixed


def test_depthwise_convs_are_tied_to_one_group_and_rebuilt_depthwise():
    model, found, _ = _dense("mobilenet_v2")
    dw = [w for w in found.layout.layers if w.kind == "dwconv"]
    assert dw and all(w.in_group == w.out_group is not None for w in dw)
    widths = {name: max(1, g.width // 2) for name, g in found.layout.groups.items()}
    compact = resize_model(copy.deepcopy(model), found.layout, widths)
    for w in dw:
        conv = compact.get_submodule(w.module)
        assert conv.groups == conv.in_channels == conv.out_channels == widths[w.out_group]


def test_squeeze_excitation_squeeze_is_gated_on_its_output_and_expand_joins_the_gated_group():
    _, found, _ = _dense("mobilenet_v3_large")
    wiring = {w.module: w for w in found.layout.layers}
    se = [m for m in wiring if m.endswith("fc1")]
    assert se
    for fc1 in se:
        fc2 = wiring[fc1.removesuffix("fc1") + "fc2"]
        squeeze = found.layout.groups[wiring[fc1].out_group]  # no BN: gated on fc1's output
        assert squeeze.output_gates == (fc1,) and squeeze.bns == () and fc2.in_group == fc1
        assert wiring[fc1].in_group == fc2.out_group is not None  # the channels it gates
        assert fc2.module not in found.layout.groups[fc2.out_group].scored_convs


# Real-size models, discovery only (on the meta device: nothing is allocated or run):
# (prunable groups, coupled groups, channel classes left whole) at 3 x 32 x 32.
FULL_SIZE = {
    "resnet18": (12, 4, 0),
    "resnet50": (37, 4, 0),
    "resnext50_32x4d": (37, 4, 0),
    "wide_resnet50_2": (37, 4, 0),
    "vgg16_bn": (15, 0, 0),
    "mobilenet_v2": (25, 5, 0),
    "mobilenet_v3_small": (27, 4, 0),
    "mobilenet_v3_large": (30, 6, 0),
    "efficientnet_b0": (40, 5, 0),
    "regnet_y_400mf": (53, 4, 0),
    "shufflenet_v2_x1_0": (18, 0, 19),
    "densenet121": (120, 0, 0),
    "mnasnet1_0": (25, 5, 0),
    "convnext_tiny": (18, 0, 22),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_real_size_structure(name):
    model = build_on_meta(lambda: torchvision.models.get_model(name, weights=None, num_classes=10))
    found = discover(model, SHAPE)
    groups = found.layout.groups.values()
    assert (len(groups), sum(g.coupled for g in groups), len(found.whole)) == FULL_SIZE[name]
    at_concatenations = {g for w in found.layout.layers for g, _ in w.out_segments}
    assert all(g.scored_convs and (g.gate_points or g.name in at_concatenations) for g in groups)
    assert not any(g.scored_bns and g.output_gates for g in groups)


@pytest.mark.parametrize("name", sorted(n for n in BUILDERS if EXPECTED[n][0]))
def test_a_budget_fitted_on_the_discovered_layout_holds_on_the_compact_model(name):
    """Widths fitted to a FLOPs budget (uniform keep ratio, then filled) give a compact
    model whose counted FLOPs meet it within 1 point. Models that prune little (grouped
    convs or concatenations left whole) get the lowest budget they can reach plus 0.05."""
    from pipeline.pruning.budget import uniform_budget_widths, uniform_widths

    model, found, flops = _dense(name)
    groups = list(found.layout.groups)
    floor = flops.ratio(uniform_widths(flops, groups, 0.0, 1))
    target = max(0.5, floor + 0.05)
    widths = uniform_budget_widths(flops, groups, target, k_min=1)
    compact = resize_model(copy.deepcopy(model), found.layout, widths)
    ratio = count_flops(compact, SHAPE) / count_flops(model, SHAPE)
    assert target - 0.01 <= ratio <= target, (name, target, ratio)


def test_convnext_mlp_hidden_width_prunes_gated_on_its_first_linear_layer():
    """LayerNorm over the channels stays whole, but each block's MLP hidden width (4 x the
    channels, between its two linear layers on N x H x W x C tokens) is a group."""
    _, found, _ = _dense("convnext_tiny")
    wiring = {w.module: w for w in found.layout.layers}
    assert found.layout.groups
    for name, group in found.layout.groups.items():
        assert name.endswith("block.3") and group.output_gates == (name,)
        second = wiring[name.removesuffix("3") + "5"]
        assert (second.in_group, second.out_group) == (name, None)
