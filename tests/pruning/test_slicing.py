"""Dense <-> compact: masked dense network == physically pruned network; scatter round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.models import available_models, create_model
from pipeline.pruning.gates import gated, keep_masks
from pipeline.pruning.slicing import (
    build_model,
    dense_model,
    dense_spec,
    scatter_weights,
    slice_weights,
    spec_for_indices,
)

SIZES = {"resnet18": 32, "resnet34": 32, "resnet50": 32}


def _randomise_bn(model, generator):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def _random_keep(layout, generator, keep_fraction=0.5):
    keep = {}
    for name, g in layout.groups.items():
        k = max(1, int(g.width * keep_fraction))
        keep[name] = torch.sort(torch.randperm(g.width, generator=generator)[:k]).values
    return keep


def _masked_equals_sliced(name, seed, keep_fraction):
    size = SIZES.get(name, 16)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense = create_model(name, num_classes=5, in_channels=3, input_size=size).eval()
    _randomise_bn(dense, generator)
    layout = dense.channel_layout()
    keep = _random_keep(layout, generator, keep_fraction)
    compact = build_model(spec_for_indices(dense_spec(name, (3, size, size), 5), keep)).eval()
    slice_weights(dense, compact, layout, keep)
    x = torch.randn(3, 3, size, size, generator=generator)
    with torch.no_grad(), gated(dense, layout, keep_masks(layout, keep)):
        masked = dense(x)
    with torch.no_grad():
        sliced = compact(x)
    torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", available_models())
def test_masked_dense_equals_sliced_compact(name):
    _masked_equals_sliced(name, seed=0, keep_fraction=0.5)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), keep_fraction=st.floats(0.05, 1.0))
def test_masked_equals_sliced_property(seed, keep_fraction):
    _masked_equals_sliced("resnet20", seed, keep_fraction)


def test_scatter_writes_kept_indices_and_leaves_dropped_untouched():
    torch.manual_seed(0)
    dense = create_model("resnet20", num_classes=10, in_channels=3, input_size=16)
    layout = dense.channel_layout()
    keep = _random_keep(layout, torch.Generator().manual_seed(1), 0.5)
    compact = build_model(spec_for_indices(dense_spec("resnet20", (3, 16, 16), 10), keep))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    for p in compact.parameters():
        p.data.fill_(7.0)
    scatter_weights(dense, compact, layout, keep)
    after = dense.state_dict()
    stem_conv = after["conv1.weight"]
    kept = keep["stem"]
    assert torch.all(stem_conv[kept] == 7.0)
    dropped = torch.ones(16, dtype=torch.bool)
    dropped[kept] = False
    assert torch.equal(stem_conv[dropped], before["conv1.weight"][dropped])
    # the first block's inner conv: rows by its own group, columns by the stem group
    w = after["stages.0.0.conv2.weight"]
    inner = keep["stages.0.0.conv1"]
    assert torch.all(w[kept][:, inner] == 7.0)
    # round trip: slicing back gives exactly what was scattered
    again = build_model(spec_for_indices(dense_spec("resnet20", (3, 16, 16), 10), keep))
    slice_weights(dense, again, layout, keep)
    for (k, a), b in zip(again.state_dict().items(), compact.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_dense_model_is_the_registry_model_with_its_layout_and_spec():
    """One place builds a model from a name and a shape; it draws the same random numbers
    as the registry's factory (a method's initial weights depend on it)."""
    torch.manual_seed(0)
    dense = dense_model("resnet20", (3, 16, 12), 7)
    torch.manual_seed(0)
    expected = create_model("resnet20", num_classes=7, in_channels=3, input_size=16)
    for (k, a), (_, b) in zip(
        dense.model.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert dense.layout.dense_widths() == dense.spec.widths
    assert (dense.spec.model, dense.spec.input_shape, dense.spec.num_classes) == (
        "resnet20",
        (3, 16, 12),
        7,
    )
    assert dense_spec("resnet20", [3, 16, 12], 7) == dense.spec
    assert build_model(dense.spec).state_dict().keys() == dense.model.state_dict().keys()
