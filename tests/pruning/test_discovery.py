"""Channel groups discovered from the traced graph agree with the hand-written layouts,
and what cannot be pruned safely is left whole with a reason."""

import pytest
import torch
from torch import nn

from pipeline.errors import ArtifactError
from pipeline.models import available_models, create_model
from pipeline.pruning.discovery import DiscoveryError, discover, discover_layout
from pipeline.pruning.groups import ChannelLayout

SIZES = {"resnet18": 32, "resnet34": 32, "resnet50": 32}


def _renaming(hand: ChannelLayout, found: ChannelLayout) -> dict[str, str]:
    """The bijection hand-written group name -> discovered name implied by the wiring."""
    mapping: dict[str, str] = {}
    found_wiring = {w.module: w for w in found.layers}
    for w in hand.layers:
        other = found_wiring[w.module]
        for mine, theirs in ((w.out_group, other.out_group), (w.in_group, other.in_group)):
            assert (mine is None) == (theirs is None), w.module
            if mine is not None:
                assert mapping.setdefault(mine, theirs) == theirs, w.module
    assert sorted(mapping) == sorted(hand.groups)
    assert sorted(mapping.values()) == sorted(found.groups)  # one to one
    return mapping


@pytest.mark.parametrize("name", available_models())
def test_discovery_reproduces_the_hand_written_layout(name):
    size = SIZES.get(name, 16)
    with torch.device("meta"):  # nothing is allocated: structure only
        model = create_model(name, num_classes=10, in_channels=3, input_size=size)
    hand, found = model.channel_layout(), discover_layout(model, (3, size, size))
    rename = _renaming(hand, found)
    kinds = {w.module: w.kind for w in found.layers}
    assert {w.module: w.kind for w in hand.layers} == kinds
    assert len(found.layers) == len(hand.layers)  # every layer wired exactly once
    for name_, group in hand.groups.items():
        twin = found.groups[rename[name_]]
        assert twin.width == group.width
        assert twin.coupled == group.coupled
        assert set(twin.scored_convs) == set(group.scored_convs)
        assert set(twin.scored_bns) == set(group.scored_bns)
        assert set(twin.bns) == set(group.bns)


def _conv_bn(c_in, c_out, **kwargs):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, **kwargs),
                         nn.BatchNorm2d(c_out), nn.ReLU())  # fmt: skip


class _Residual(nn.Module):
    """stem -> a -> b (+ stem) -> head; ``join`` decides how the branch meets the stem."""

    def __init__(self, join="add", middle=None):
        super().__init__()
        self.stem, self.a, self.b = _conv_bn(3, 4), _conv_bn(4, 6), _conv_bn(6, 4)
        self.middle = middle or nn.Identity()
        self.join = join
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8 if join == "cat" else 4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.b(self.middle(self.a(x)))
        y = torch.cat([x, y], 1) if self.join == "cat" else x + y
        return self.fc(torch.flatten(self.pool(y), 1))


def _groups_of(layout):
    return {w.module: (w.out_group, w.in_group) for w in layout.layers}


def test_a_residual_add_couples_its_operands_into_one_group():
    found = discover(_Residual(), (3, 8, 8))
    wiring = _groups_of(found.layout)
    stem = wiring["stem.0"][0]
    assert wiring["b.0"][0] == stem and wiring["fc"] == (None, stem)
    assert found.layout.groups[stem].coupled and not found.layout.groups["a.0"].coupled
    assert set(found.layout.groups[stem].bns) == {"stem.1", "b.1"}
    assert found.whole == ()


def test_concatenated_channels_stay_groups_of_their_own_read_run_by_run():
    found = discover(_Residual(join="cat"), (3, 8, 8))
    assert list(found.layout.groups) == ["stem.0", "a.0", "b.0"] and found.whole == ()
    fc = {w.module: w for w in found.layout.layers}["fc"]
    assert fc.in_group is None and fc.in_segments == (("stem.0", 4), ("b.0", 4))


@pytest.mark.parametrize(
    ("middle", "whole", "reason"),
    [
        (nn.GroupNorm(2, 6), "a.0", "layer 'middle'"),
        (nn.Sigmoid(), "a.0", "reads them without a gate"),  # sigmoid(0) != 0
    ],
)
def test_what_may_mix_or_escape_the_gates_is_left_whole(middle, whole, reason):
    found = discover(_Residual(middle=middle), (3, 8, 8))
    assert whole not in found.layout.groups
    assert found.whole[0][0] == whole and reason in found.whole[0][1]
    assert {m for m, _ in found.whole} <= {whole, "middle"}
    assert _groups_of(found.layout)[whole][0] is None
    assert "stem.0" in found.layout.groups  # the residual group is not affected


class _Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _conv_bn(3, 4), _conv_bn(4, 4)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        return self.b(x).mean((2, 3))


def test_a_channel_shuffle_leaves_its_channels_whole():
    found = discover(_Shuffle(), (3, 8, 8))
    assert list(found.layout.groups) == []  # b's channels reach the output
    assert [m for m, _ in found.whole] == ["a.0"]
    assert "reshapes the channel dimension" in found.whole[0][1]


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = _Gate()

    def forward(self, x):
        return self.gate(self.conv(x))


class _Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_a_model_that_cannot_be_traced_fails_naming_the_layer():
    with pytest.raises(DiscoveryError, match="in layer 'gate'.*channel_layout"):
        discover(_DataDependent(), (3, 8, 8))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.aux = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.conv(x)


def test_a_layer_the_forward_never_calls_is_an_error():
    with pytest.raises(DiscoveryError, match=r"\['aux'\] are never used"):
        discover(_Unused(), (3, 8, 8))


def test_a_model_that_rejects_the_input_shape_is_an_error_before_any_training():
    with pytest.raises(DiscoveryError, match="2 x 1 x 8 x 8 zeros batch in layer .stem.0."):
        discover(_Residual(), (1, 8, 8))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block = _conv_bn(3, 4), _conv_bn(4, 4)

    def forward(self, x):
        return self.block(self.block(self.stem(x))).mean((2, 3))


def test_a_layer_called_twice_is_left_whole():
    found = discover(_Shared(), (3, 8, 8))
    assert found.layout.groups == {}
    assert any("called more than once" in why for _, why in found.whole)


def test_discovery_leaves_the_model_and_its_batchnorm_statistics_untouched():
    model = _Residual().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discover(model, (3, 8, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dense_model_discovers_the_layout_of_a_model_without_one(monkeypatch):
    from pipeline.models import registry
    from pipeline.pruning.slicing import build_model, dense_model, spec_for_indices
    from pipeline.pruning.spec import ArchSpec

    def factory(*, num_classes, in_channels, input_size):
        return _Residual()

    monkeypatch.setitem(registry._MODELS, "plain_residual", factory)
    dense = dense_model("plain_residual", (3, 8, 8), 3)
    assert not hasattr(dense.model, "channel_layout")
    assert dense.spec.widths == {"stem.0": 4, "a.0": 6}
    keep = {"stem.0": torch.tensor([0, 2]), "a.0": torch.tensor([1, 3, 5])}
    spec = ArchSpec.from_dict(spec_for_indices(dense.spec, keep).to_dict())  # widths checked
    compact = build_model(spec)
    assert compact.b[0].out_channels == 2 and compact.a[0].out_channels == 3
    with pytest.raises(ArtifactError, match="widths.a.0"):
        ArchSpec.from_dict({**spec.to_dict(), "widths": {"stem.0": 4, "a.0": 7}})


class _BnAfterActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act, self.bn = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.bn(self.act(self.conv(x)))).mean((2, 3))


def test_a_bn_after_the_activation_still_gates_and_scores_the_group():
    layout = discover_layout(_BnAfterActivation(), (3, 8, 8))
    group = layout.groups["conv"]
    assert (group.scored_convs, group.scored_bns, group.bns) == (("conv",), ("bn",), ("bn",))
    assert _groups_of(layout)["head"] == (None, "conv")


def test_a_spec_of_a_model_that_cannot_be_built_on_the_meta_device_is_still_checked(
    monkeypatch,
):
    from pipeline.models import registry
    from pipeline.pruning.spec import ArchSpec

    def factory(*, num_classes, in_channels, input_size):
        model = _Residual()
        model.fc.bias.data.fill_(float(model.fc.weight.detach().sum()))  # a value: not on meta
        return model

    monkeypatch.setitem(registry._MODELS, "reads_weights", factory)
    spec = {"spec_version": 1, "model": "reads_weights", "input_shape": [3, 8, 8]}
    ArchSpec.from_dict({**spec, "num_classes": 3, "widths": {"stem.0": 1, "a.0": 6}})
    with pytest.raises(ArtifactError, match="no channel group"):
        ArchSpec.from_dict({**spec, "num_classes": 3, "widths": {"stem.0": 1, "b.0": 6}})


class _ByParameters(nn.Module):
    """A linear layer used through its weight, and one inside an attention module."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.proj, self.attention = nn.Linear(4, 4), nn.MultiheadAttention(4, 1)

    def forward(self, x):
        tokens = self.bn(self.conv(x)).flatten(2).permute(2, 0, 1)
        tokens = torch.nn.functional.linear(tokens, self.proj.weight, self.proj.bias)
        return self.attention(tokens, tokens, tokens)[0].mean(0)


def test_layers_used_through_their_parameters_or_inside_another_are_left_whole():
    from pipeline.pruning.flops import FlopsModel

    model = _ByParameters()
    found = discover(model, (3, 4, 4))
    FlopsModel(model, found.layout, (3, 4, 4))  # every MAC the hooks see is wired
    assert found.layout.groups == {}
    indirect = {m for m, why in found.whole if "used inside another layer" in why}
    assert indirect == {"proj", "attention.out_proj"}
    assert {w.module for w in found.layout.layers} == {"conv", "bn"}  # never sliced
