"""Each baseline returns a trained compact model that meets the budget within 1 point."""

import copy

import pytest
import torch

from pipeline.data import normalize
from pipeline.methods import SearchContext, available_methods, get_method
from pipeline.methods.base import dense_setup
from pipeline.methods.baselines import prune_pretrained, train_from_scratch
from pipeline.pruning.flops import count_flops
from pipeline.pruning.importance import Importance
from pipeline.pruning.slicing import build_model
from pipeline.train import evaluate, recalibrate_bn, seed_everything
from tests.conftest import TEST_DEVICE, tiny_config

BASELINES = ["scratch", "l1", "slimming", "random"]


def test_registry_lists_baselines():
    assert set(BASELINES) <= set(available_methods())


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("target", [0.3, 0.5])
def test_baseline_meets_budget(method, target, tiny_data):
    cfg = tiny_config(search={"method": method, "target_flops": target}, model={"arch": "resnet20"})
    seed_everything(0)
    result = get_method(method)(SearchContext(cfg, tiny_data, torch.device(TEST_DEVICE)))
    ratio = count_flops(result.model, tiny_data.input_shape) / count_flops(
        build_model(result.dense_spec), tiny_data.input_shape
    )
    assert target - 0.01 <= ratio <= target
    assert result.summary["flops_ratio"] == pytest.approx(ratio)
    assert build_model(result.spec).state_dict().keys() == result.model.state_dict().keys()
    assert 0.0 <= evaluate(result.model, tiny_data.val, tiny_data, TEST_DEVICE)["top1"] <= 1.0


def test_l1_keeps_the_largest_filters(tiny_data):
    cfg = tiny_config(
        search={"method": "l1", "target_flops": 0.5, "epochs": 0}, model={"arch": "vgg16"}
    )
    seed_everything(0)
    result = get_method("l1")(SearchContext(cfg, tiny_data, torch.device("cpu")))
    # The first conv keeps the filters of largest L1 norm: compare to the dense init.
    seed_everything(0)
    from pipeline.models import create_model

    dense = create_model("vgg16", num_classes=4, in_channels=1, input_size=8)
    norms = dense.features[0].weight.abs().flatten(1).sum(1)
    k = result.spec.widths["conv1"]
    expected = torch.sort(torch.topk(norms, k).indices).values
    torch.testing.assert_close(result.model.features[0].weight, dense.features[0].weight[expected])


def test_scratch_is_deterministic(tiny_data):
    cfg = tiny_config(search={"method": "scratch"})
    outputs = []
    for _ in range(2):
        seed_everything(0)
        result = get_method("scratch")(SearchContext(cfg, tiny_data, torch.device("cpu")))
        outputs.append(result.model(tiny_data.val.images.float()[:4]).detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_train_from_scratch_builds_the_given_widths_and_trains_them(tiny_data):
    cfg = tiny_config(search={"method": "scratch"}, model={"arch": "resnet20"})
    ctx = SearchContext(cfg, tiny_data, torch.device("cpu"))
    dense = dense_setup(ctx).spec
    widths = {g: max(1, w // 2) for g, w in dense.widths.items()}
    widths[next(iter(widths))] = dense.widths[next(iter(widths))]  # not uniform
    seed_everything(0)
    result = train_from_scratch(ctx, widths, name="retrain")
    assert result.spec.widths == widths
    assert build_model(result.spec).state_dict().keys() == result.model.state_dict().keys()
    assert len(result.history) == cfg.search.epochs
    assert result.summary["flops_ratio"] < 1


@pytest.mark.parametrize("method", ["l1", "slimming", "random"])
def test_pruned_model_gets_bn_statistics_of_its_own(method, tiny_data):
    """Sliced dense statistics describe other channels' sums (val top-1 at chance on
    digits); every freshly pruned model's statistics are those of its own activations
    on the training images."""
    everything = len(tiny_data.train.labels)  # so any re-estimation batch is all of them
    cfg = tiny_config(
        train={"batch_size": everything, "augment": {"crop_padding": 0}},
        search={"method": method, "target_flops": 0.5},
        model={"arch": "resnet20"},
    )
    seed_everything(0)
    result = get_method(method)(SearchContext(cfg, tiny_data, torch.device("cpu")))
    own = copy.deepcopy(result.model)
    recalibrate_bn(own, [normalize(tiny_data.train.images, tiny_data.mean, tiny_data.std)])
    got, want = result.model.state_dict(), own.state_dict()
    stats = [k for k in got if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


class FirstChannels(Importance):
    """A criterion a baseline can use without any change to it: the lowest-numbered."""

    def __call__(self, model, layout):
        return {n: -torch.arange(float(g.width)) for n, g in layout.groups.items()}


def test_a_new_criterion_prunes_through_the_shared_baseline(tiny_data):
    cfg = tiny_config(
        search={"method": "l1", "target_flops": 0.5, "epochs": 0}, model={"arch": "resnet20"}
    )
    seed_everything(0)
    ctx = SearchContext(cfg, tiny_data, torch.device("cpu"))
    result = prune_pretrained(ctx, FirstChannels(), "first")
    assert 0.49 <= result.summary["flops_ratio"] <= 0.5
    seed_everything(0)
    dense = dense_setup(ctx).model
    k = result.spec.widths["stem"]
    torch.testing.assert_close(result.model.conv1.weight, dense.conv1.weight[:k])
