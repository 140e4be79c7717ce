"""Concatenations (DenseNet, GoogLeNet/Inception branches): every input keeps its own
group, each kept index is mapped into the concatenated tensor at its input's offset, and
every consumer (conv, BN over the concatenation, linear) is sliced accordingly; masked
dense == sliced compact, FLOPs model == counted FLOPs, JST's gates fold, scatter inverts
slice."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pipeline.methods.jst.gates import learnable_gates
from pipeline.pruning.exactness import (
    check,
    compact_of,
    discovered_for_check,
    gated_then_folded,
    random_keep,
)
from pipeline.pruning.slicing import resize_model, slice_weights

SHAPE = (3, 8, 8)


def _conv_bn(c_in, c_out, kernel=3):
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())  # fmt: skip


class _Dense(nn.Module):
    """DenseNet's pattern: each layer reads BN-ReLU-conv of everything so far (a BN over
    the concatenation), its conv output (no BN of its own) joins the next concatenation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.norm1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(10), nn.Conv2d(10, 4, 3, padding=1, bias=False)
        self.norm3, self.fc = nn.BatchNorm2d(14), nn.Linear(14, 3)

    def forward(self, x):
        features = [self.stem(x)]
        features.append(self.conv1(torch.relu(self.norm1(torch.cat(features, 1)))))
        features.append(self.conv2(torch.relu(self.norm2(torch.cat(features, 1)))))
        out = torch.relu(self.norm3(torch.cat(features, 1)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class _Inception(nn.Module):
    """GoogLeNet's pattern: conv-BN-ReLU branches (one behind a max-pool) concatenated,
    read by the next block's convs and a pooled classifier."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn(3, 5)
        self.branch1, self.branch2 = _conv_bn(5, 3, 1), _conv_bn(5, 4, 3)
        self.pool, self.branch3 = nn.MaxPool2d(3, 1, 1), _conv_bn(5, 2, 1)
        self.next = _conv_bn(9, 6)
        self.fc = nn.Linear(6 + 9, 3)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.branch1(x), self.branch2(x), self.branch3(self.pool(x))], 1)
        z = torch.cat([self.next(y), y], dim=1)
        return self.fc(z.mean((2, 3)))


MODELS = {"dense": _Dense, "inception": _Inception}
_DENSE: dict = {}


def _dense(name):
    if name not in _DENSE:
        _DENSE[name] = discovered_for_check(MODELS[name], SHAPE, bn_bias=True)
    return _DENSE[name]


def test_every_concatenated_input_is_a_group_and_its_readers_are_wired_run_by_run():
    _, found, _ = _dense("dense")
    assert list(found.layout.groups) == ["stem", "conv1", "conv2"] and found.whole == ()
    wiring = {w.module: w for w in found.layout.layers}
    assert wiring["conv2"].in_segments == (("stem", 6), ("conv1", 4))
    assert wiring["norm3"].out_segments == (("stem", 6), ("conv1", 4), ("conv2", 4))
    assert wiring["norm1"].out_group == "stem"  # a concatenation of one is that tensor
    _, found, _ = _dense("inception")
    assert found.whole == () and len(found.layout.groups) == 5


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_masked_dense_equals_sliced_compact_and_flops_agree(name, seed):
    model, found, flops = _dense(name)
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *SHAPE, generator=generator)
    report = check(model, found.layout, keep, x, flops)
    assert report.holds(tolerance=1e-5), report


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jst_gates_on_a_compact_model_fold_into_the_bns_over_concatenations(name):
    """JST gates and folds a compact sub-network with the dense layout: the runs of a BN
    over a concatenation take their kept widths from the gates."""
    model, found, _ = _dense(name)
    layout = found.layout
    generator = torch.Generator().manual_seed(5)
    keep = random_keep(layout, generator)
    compact = resize_model(copy.deepcopy(model), layout, {g: len(k) for g, k in keep.items()})
    slice_weights(model, compact, layout, keep)
    compact.eval()
    gates = {g: torch.rand(len(k), generator=generator) * 2 for g, k in keep.items()}
    x = torch.randn(2, *SHAPE, generator=generator)
    expected, folded = gated_then_folded(compact, layout, gates, x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jst_learnable_gates_on_a_compact_model_get_a_gradient_in_every_group(name):
    model, found, _ = _dense(name)
    keep = random_keep(found.layout, torch.Generator().manual_seed(6))
    sub = compact_of(model, found.layout, keep).train()
    alpha = {group: torch.zeros(len(kept)) for group, kept in keep.items()}
    with learnable_gates(sub, found.layout, alpha) as net:
        net(torch.randn(4, *SHAPE)).sum().backward()
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alpha)
