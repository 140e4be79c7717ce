"""JST's learnable gates: the gated network of pruning.gates, with alpha learned in the step."""

import torch

from pipeline.config import parse_config
from pipeline.methods.jst.gates import WeightsAndGates, gates_of, learnable_gates, load_momenta
from pipeline.models import create_model
from pipeline.pruning.gates import gated
from pipeline.train import make_optimizer, train_steps


def _network():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_channels=1, input_size=8)
    layout = model.channel_layout()
    alpha = {n: torch.randn(g.width) for n, g in layout.groups.items()}
    return model, layout, alpha


def test_learnable_gates_compute_what_fixed_gates_do_and_are_removed_after():
    model, layout, alpha = _network()
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), gated(model, layout, {g: gates_of(a) for g, a in alpha.items()}):
        expected = model(x)
    with learnable_gates(model, layout, alpha) as net:
        out = net(x)
        out.sum().backward()
        assert all(a.grad is not None for a in net.alpha)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.equal(model(x), expected)  # no gate left behind


def _batches(count):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen))
        for _ in range(count)
    ]


def test_load_momenta_keeps_the_learning_rates_of_now_for_both_optimizers():
    settings = parse_config({}).train
    model, layout, alpha = _network()
    with learnable_gates(model, layout, alpha) as net:
        optimizers = [
            make_optimizer(model, 0.1, settings),
            WeightsAndGates(make_optimizer(model, 0.1, settings), net, 0.01, 3.0),
        ]
        for optimizer in optimizers:
            train_steps(net, iter(_batches(2)), 2, optimizer, settings)
            saved = optimizer.state_dict()
            for group in optimizer.param_groups:
                group["lr"] = 0.5  # a later point of the schedule
            load_momenta(optimizer, saved)
            assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
            for group in optimizer.param_groups:
                group["lr"] = 0.1
            assert _equal(optimizer.state_dict(), saved)  # the momenta came back


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b
