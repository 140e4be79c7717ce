"""Every model `jst models` lists as verified runs the whole pipeline at a tiny input size,
without training: discovery, the budget feasibility check the search stage makes before any
training, slicing at the default FLOPs budget (random kept channels), the save_compact /
load_compact round trip (safetensors, bit for bit), then ONNX export with ONNX Runtime
parity.

Cost, measured on 2 CPU cores shared with other jobs (load 7): the chain up to the round
trip takes 0.2-1 s a model and 2-4.5 s for the largest (resnet110/101/152, resnext101,
wide_resnet50_2, the torchvision VGGs with BN); the ONNX export (torch.export, the ONNX
translation, the checker and ONNX Runtime) 3-12 s a model. Exporting all of them would add
minutes to the suite, so the export runs on one model of each family of operators
(``EXPORTED``); set
JST_EXPORT_EVERY_VERIFIED=1 to export every verified model. There, resnet101, resnet152 and
resnext101_32x8d fail the export's parity check (largest difference 8e-4 to 5e-3 at logits
of scale 1.4, tolerance 1e-4 x scale): untrained, with BN statistics of 16 images, these
deep networks amplify rounding so much that PyTorch's own float32 output differs from its
float64 output by 5.7e-4 (resnet101), as much as ONNX Runtime's does; with the initial BN
statistics they pass (1.6e-6)."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.artifacts import load_compact, save_compact
from pipeline.config import SearchConfig
from pipeline.export import export_onnx
from pipeline.methods.base import compact_from_dense, flops_setup
from pipeline.models.registry import verified_models
from pipeline.models.torchvision_zoo import min_input_size
from pipeline.pruning.budget import check_feasible, uniform_budget_widths
from pipeline.pruning.groups import indices_from_scores
from pipeline.pruning.slicing import dense_model
from pipeline.train import recalibrate_bn

VERIFIED = verified_models()
SIDE = 32  # the smallest side used; a model whose torchvision minimum is larger gets that
CLASSES = 5
DEFAULTS = SearchConfig()  # the budget, k_min and round_to of a run that sets none
# One model of each family of operators, its smallest: the other members repeat the same
# blocks (and so the same exported operators) at other depths and widths.
EXPORTED = {
    "resnet20",  # hand-written CIFAR ResNets (resnet20/32/56/110), option-B shortcuts
    "vgg16",  # hand-written VGGs (vgg16/19)
    # torchvision bottlenecks, grouped: resnet101/152, resnext, wide_resnet50_2, and the
    # hand-written ImageNet ResNets (resnet18/34/50), which are torchvision's modules
    "resnext50_32x4d",
    "vgg11_bn",  # torchvision VGGs with BN (11/13/16/19): a 7 x 7 map flattened
    "mobilenet_v3_small",  # inverted residuals, hardswish, SE (mobilenet_v2/v3)
    "efficientnet_b0",  # MBConv with SE and stochastic depth (b0-b3)
    "regnet_y_400mf",  # grouped bottlenecks with SE (regnet_x: the same without SE)
    "shufflenet_v2_x0_5",  # channel split, concatenation, shuffle (x0_5/x1_0)
    "densenet121",  # dense concatenation
    "mnasnet0_5",  # needs its state-dict version to load (mnasnet0_5/1_0)
}
EXPORT_EVERY = os.environ.get("JST_EXPORT_EVERY_VERIFIED") == "1"
CALIBRATION_IMAGES = 16
_ROUND_TRIPPED: dict[str, tuple] = {}  # name -> (loaded compact model, 3 of its images)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: these tensors are tiny, and on 2 cores shared with other work
    two spinning threads made the forward passes 8x slower (efficientnet_b0: 18 s, not 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_exported_families_are_verified_models():
    assert set(VERIFIED) >= EXPORTED


@pytest.mark.parametrize("name", VERIFIED)
def test_a_verified_model_is_pruned_and_round_trips(name, tmp_path):
    side = max(SIDE, min_input_size(name))
    input_shape = (3, side, side)
    torch.manual_seed(0)
    dense = dense_model(name, input_shape, CLASSES)
    setup = flops_setup(dense, DEFAULTS.prune_residual, DEFAULTS.target_flops)
    budget, k_min, round_to = DEFAULTS.target_flops, DEFAULTS.k_min, DEFAULTS.round_to
    check_feasible(setup.flops, setup.groups, budget, k_min, round_to, model=name)
    widths = uniform_budget_widths(setup.flops, setup.groups, budget, k_min, round_to)
    assert budget - 0.02 <= setup.flops.ratio(widths) <= budget
    generator = torch.Generator().manual_seed(1)  # a random keep set, not the first channels
    scores = {
        g: torch.rand(group.width, generator=generator) for g, group in setup.layout.groups.items()
    }
    spec, compact = compact_from_dense(setup, indices_from_scores(scores, widths))
    # BN statistics of its own, from the images it is checked on: logits of a sane scale
    # (at 32 px the last maps are 1 x 1, and statistics of a few other images blow them up).
    images = torch.randn(
        CALIBRATION_IMAGES, *input_shape, generator=torch.Generator().manual_seed(2)
    )
    recalibrate_bn(compact, [images])

    save_compact(tmp_path / "compact", spec, compact)
    loaded_spec, loaded = load_compact(tmp_path / "compact")
    assert loaded_spec.sha256 == spec.sha256
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), compact(images), rtol=0, atol=0)
    if name in EXPORTED or EXPORT_EVERY:
        _ROUND_TRIPPED[name] = (loaded, images[:3])


@pytest.mark.parametrize("name", VERIFIED if EXPORT_EVERY else sorted(EXPORTED))
def test_a_verified_model_exports_to_onnx_with_runtime_parity(name, tmp_path):
    if name not in _ROUND_TRIPPED:  # run alone (-k): make the round-tripped model first
        test_a_verified_model_is_pruned_and_round_trips(name, tmp_path)
    loaded, samples = _ROUND_TRIPPED.pop(name)
    input_shape = tuple(samples.shape[1:])
    report = export_onnx(loaded, input_shape, tmp_path / f"{name}.onnx", sample_inputs=samples)
    # export_onnx raises past its tolerance already; the bound is restated here.
    assert report.max_abs_diff < 1e-4 * max(1.0, report.logit_scale)
    assert report.num_checked == 3
