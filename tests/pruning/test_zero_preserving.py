"""Discovery treats an op as zero-preserving (a masked channel stays zero) only when it is:
every entry of the pass-through lists is checked against f(0) == 0 on real calls."""

import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.pruning.discovery import discover, rules
from pipeline.pruning.discovery.rules import call_keeps_zero, module_keeps_zero
from pipeline.pruning.exactness import check, random_keep
from pipeline.pruning.flops import FlopsModel

ZEROS = torch.zeros(2, 3, 4, 4)

# Instances of every pass-through module type, with the parameters that decide f(0).
MODULE_EXAMPLES = {
    nn.ReLU: [nn.ReLU()],
    nn.ReLU6: [nn.ReLU6()],
    nn.LeakyReLU: [nn.LeakyReLU(0.2)],
    nn.SiLU: [nn.SiLU()],
    nn.GELU: [nn.GELU(), nn.GELU("tanh")],
    nn.Hardswish: [nn.Hardswish()],
    nn.Hardtanh: [nn.Hardtanh(), nn.Hardtanh(0.1, 6.0), nn.Hardtanh(-3.0, -1.0)],
    nn.Mish: [nn.Mish()],
    nn.ELU: [nn.ELU(2.0)],
    nn.Tanh: [nn.Tanh()],
    nn.Identity: [nn.Identity()],
    nn.Dropout: [nn.Dropout()],
    nn.Dropout2d: [nn.Dropout2d()],
    nn.MaxPool2d: [nn.MaxPool2d(3, 2, 1)],
    nn.AvgPool2d: [nn.AvgPool2d(3, 2, 1)],
    nn.AdaptiveAvgPool2d: [nn.AdaptiveAvgPool2d(1)],
    nn.AdaptiveMaxPool2d: [nn.AdaptiveMaxPool2d(2)],
}

# Calls of every pass-through function: (function, extra positional args, keyword args).
FUNCTION_EXAMPLES = {
    torch.relu: [((), {})],
    torch.tanh: [((), {})],
    F.relu: [((), {})],
    F.relu6: [((), {})],
    F.hardtanh: [((), {}), ((0.1, 6.0), {}), ((), {"min_val": 0.5, "max_val": 2.0})],
    F.hardswish: [((), {})],
    F.silu: [((), {})],
    F.gelu: [((), {})],
    F.mish: [((), {})],
    F.elu: [((), {"alpha": 2.0})],
    F.leaky_relu: [((0.3,), {})],
    F.dropout: [((), {"training": True})],
    F.dropout2d: [((), {"training": True})],
    F.max_pool2d: [((3, 2, 1), {})],
    F.avg_pool2d: [((3, 2, 1), {})],
    F.adaptive_avg_pool2d: [((1,), {})],
    F.adaptive_max_pool2d: [((2,), {})],
}


def test_every_pass_module_is_zero_preserving_exactly_when_discovery_says_so():
    assert set(MODULE_EXAMPLES) == set(rules.PASS_MODULES), "give a new entry examples"
    for examples in MODULE_EXAMPLES.values():
        for module in examples:
            maps_zero_to_zero = bool((module.train()(ZEROS) == 0).all())
            assert module_keeps_zero(module) == maps_zero_to_zero, module


class _Call(nn.Module):
    def __init__(self, function, args, kwargs):
        super().__init__()
        self.function, self.args, self.kwargs = function, args, kwargs

    def forward(self, x):
        return self.function(x, *self.args, **self.kwargs)


def _call_node(function, args, kwargs) -> fx.Node:
    graph = fx.symbolic_trace(_Call(function, args, kwargs)).graph
    return next(n for n in graph.nodes if n.op == "call_function")


def test_every_pass_function_is_zero_preserving_exactly_when_discovery_says_so():
    assert set(FUNCTION_EXAMPLES) == set(rules.PASS_FUNCTIONS), "give a new entry examples"
    for function, calls in FUNCTION_EXAMPLES.items():
        for args, kwargs in calls:
            maps_zero_to_zero = bool((function(ZEROS, *args, **kwargs) == 0).all())
            node = _call_node(function, args, kwargs)
            assert call_keeps_zero(node) == maps_zero_to_zero, (function, args, kwargs)


def test_every_pass_method_maps_zero_to_zero():
    for method in rules.PASS_METHODS:
        assert (getattr(ZEROS.clone(), method)() == 0).all(), method


class _ClampedNet(nn.Module):
    """conv-BN-Hardtanh(0.1, 6) then conv-BN: the issue's case (masked != sliced by 0.0093
    when the clamp was taken for zero-preserving)."""

    def __init__(self, clamp: nn.Module):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), clamp)
        self.b = nn.Sequential(nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def _exactness(model: nn.Module, shape, seed: int):
    found = discover(model, shape)
    generator = torch.Generator().manual_seed(seed)
    keep = random_keep(found.layout, generator)
    x = torch.randn(2, *shape, generator=generator)
    return found, check(model, found.layout, keep, x, FlopsModel(model, found.layout, shape))


def test_a_clamp_that_lifts_zero_leaves_the_channels_it_feeds_whole_and_masked_equals_sliced():
    torch.manual_seed(0)
    model = _ClampedNet(nn.Hardtanh(0.1, 6.0)).eval()
    found, report = _exactness(model, (3, 8, 8), seed=1)
    assert "a.0" not in found.layout.groups and "b.0" in found.layout.groups
    assert any(m == "a.0" and "without a gate" in why for m, why in found.whole)
    assert report.holds(tolerance=1e-5), report


def test_a_clamp_whose_range_holds_zero_still_lets_its_channels_prune():
    torch.manual_seed(0)
    model = _ClampedNet(nn.Hardtanh(0.0, 6.0)).eval()
    found, report = _exactness(model, (3, 8, 8), seed=1)
    assert "a.0" in found.layout.groups
    assert report.holds(tolerance=1e-5), report
