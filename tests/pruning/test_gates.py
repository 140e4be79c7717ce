"""Gates after BN fold into BN's affine parameters at no cost and with no change."""

import pytest
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


def _gated_by_multiplying_outputs(model, layout, gates):
    """The definition of a gate: every gate point's output times its factors (hooks)."""
    from pipeline.pruning.gates import _factors_per_module, _per_channel

    handles = [
        model.get_submodule(point).register_forward_hook(
            lambda m, _i, out, factors=factors: out * factors(out).view(_per_channel(m, out))
        )
        for point, factors in _factors_per_module(layout, gates).items()
    ]
    return handles


def _train_step(model, x, gates_of_alpha, alpha, layout, reference: bool):
    """Outputs, BN running statistics and the gradients of weights and alpha after one
    training-mode forward and backward pass through the gated model."""
    model.train()
    gates = {n: (lambda a=a: gates_of_alpha(a)) for n, a in alpha.items()}
    if reference:
        handles = _gated_by_multiplying_outputs(model, layout, gates)
        out = model(x)
        for h in handles:
            h.remove()
    else:
        with gated(model, layout, gates):
            out = model(x)
    (out.square().mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads |= {f"alpha.{n}": a.grad.clone() for n, a in alpha.items()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return out.detach(), grads, buffers


def _mixed_producers():
    """BN gates, conv and linear producer gates (no BN) and a BN over a concatenation."""
    from pipeline.pruning.exactness import discovered_for_check

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            nn = torch.nn
            self.stem = nn.Conv2d(3, 6, 3, padding=1)  # no BN: gated on its output
            self.conv1, self.bn1 = nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5)
            self.norm = nn.BatchNorm2d(11)  # over cat(stem, bn1)
            self.hidden, self.fc = nn.Linear(11, 7), nn.Linear(7, 3)

        def forward(self, x):
            a = torch.relu(self.stem(x))
            b = torch.relu(self.bn1(self.conv1(a)))
            y = torch.relu(self.norm(torch.cat([a, b], 1))).mean((2, 3))
            return self.fc(torch.relu(self.hidden(y)))

    model, found, _ = discovered_for_check(Mixed, (3, 8, 8), bn_bias=True)
    return model, found.layout


@pytest.mark.parametrize("arch", ["resnet20", "mixed"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_scaled_parameters_gate_exactly_like_multiplied_outputs_in_training(arch, momentum):
    """Gates applied through the affine parameters give the outputs, running statistics
    and gradients (weights and alpha) of multiplying the outputs, in training mode too,
    with BN's exponential and cumulative statistics."""
    import copy

    torch.manual_seed(0)
    if arch == "mixed":
        model, layout = _mixed_producers()
    else:
        model = create_model(arch, num_classes=5, in_channels=3, input_size=8)
        layout = model.channel_layout()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    x = torch.randn(4, 3, 8, 8)
    results = []
    for reference in (True, False):
        torch.manual_seed(1)
        alpha = {n: torch.randn(g.width).requires_grad_() for n, g in layout.groups.items()}
        results.append(
            _train_step(
                copy.deepcopy(model), x, lambda a: 2 * torch.sigmoid(a), alpha, layout, reference
            )
        )
    (out_ref, grads_ref, buffers_ref), (out, grads, buffers) = results
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(buffers, buffers_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads, grads_ref, rtol=1e-4, atol=1e-6)
    assert any(k.startswith("alpha.") and v.abs().sum() > 0 for k, v in grads.items())


def test_a_batchnorm_whose_class_changes_in_the_block_is_still_gated():
    """Distributed training swaps BN classes in place (global statistics); a gate point
    whose class is no plain BN any more has its output multiplied instead."""

    class Shifted(torch.nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1

    model = create_model("vgg16", num_classes=5, in_channels=1, input_size=8).eval()
    layout = model.channel_layout()
    x = torch.randn(2, 1, 8, 8)
    gates = {n: torch.rand(g.width) for n, g in layout.groups.items()}
    point = model.get_submodule(layout.groups[next(iter(gates))].bns[0])
    with torch.no_grad(), gated(model, layout, gates):
        point.__class__ = Shifted
        swapped = model(x)
        point.__class__ = torch.nn.BatchNorm2d
        plain = model(x)
    assert not torch.allclose(swapped, plain)
    with torch.no_grad():
        handles = _gated_by_multiplying_outputs(model, layout, gates)
        point.__class__ = Shifted
        expected = model(x)
        point.__class__ = torch.nn.BatchNorm2d
        for h in handles:
            h.remove()
    torch.testing.assert_close(swapped, expected)
    assert all("forward" not in m.__dict__ for m in model.modules())  # restored


def test_a_copy_made_within_the_block_computes_with_its_own_parameters():
    import copy

    model = create_model("resnet20", num_classes=5, in_channels=3, input_size=8).eval()
    layout = model.channel_layout()
    x = torch.randn(2, 3, 8, 8)
    with (
        torch.no_grad(),
        gated(model, layout, {n: torch.ones(g.width) for n, g in layout.groups.items()}),
    ):
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin(x), model(x))
