"""Gates after BN fold into BN's affine parameters at no cost and with no change."""

import torch

from pipeline.models import create_model
from pipeline.pruning.gates import fold_gates, gated


def test_folding_gates_gives_the_gated_outputs():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5, in_channels=3, input_size=16).eval()
    layout = model.channel_layout()
    gates = {n: torch.rand(g.width) * 2 for n, g in layout.groups.items()}
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), gated(model, layout, gates):
        expected = model(x)
    fold_gates(model, layout, gates)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_gates_are_removed_after_the_block():
    model = create_model("vgg16", num_classes=5, in_channels=1, input_size=8).eval()
    layout = model.channel_layout()
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    with gated(model, layout, {n: torch.zeros(g.width) for n, g in layout.groups.items()}):
        assert torch.allclose(model(x), model.fc.bias.expand(2, -1))
    torch.testing.assert_close(model(x), before)


def test_a_callable_gate_is_computed_at_every_forward_and_passes_gradients():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5, in_channels=3, input_size=8).eval()
    layout = model.channel_layout()
    x = torch.randn(2, 3, 8, 8)
    alpha = {n: torch.zeros(g.width, requires_grad=True) for n, g in layout.groups.items()}
    calls = []

    def gate(a):
        def factors():
            calls.append(1)
            return torch.sigmoid(a) * 2

        return factors

    fixed = {n: (torch.sigmoid(a) * 2).detach() for n, a in alpha.items()}
    with torch.no_grad(), gated(model, layout, fixed):
        expected = model(x)
    with gated(model, layout, {n: gate(a) for n, a in alpha.items()}):
        out = model(x)
    assert len(calls) == sum(len(g.bns) for g in layout.groups.values())  # once per BN
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alpha.values())
