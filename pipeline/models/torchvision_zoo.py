"""torchvision's classification CNNs as ``model.arch``, built lazily, layouts discovered.

Importing torchvision costs seconds (it pulls in ``torch._dynamo``), so this module names
the models it lists without importing it; torchvision is imported only when one of them is
built, or when ``model.arch`` names a torchvision model not in ``DISCOVERED``. The
hand-written models (resnet18/34/50, vgg16/19, ...) keep their names: a registered name
wins over torchvision's.
"""

from __future__ import annotations

from functools import cache

from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.layers import conv_like

# The torchvision models `jst models` lists as discovered: pipeline.pruning.discovery finds
# prunable channel groups in them (tests/pruning/test_discovery_torchvision.py covers their
# families; tests/pruning/test_coverage.py requires 0.95 of their conv channels prunable,
# ShuffleNet excepted). Not listed: convnext_tiny (only its MLP widths prune), googlenet
# and alexnet (all their conv channels prune, but no whole-pipeline test covers them yet).
DISCOVERED = (
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "regnet_y_400mf",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "densenet121",
    "mnasnet0_5",
    "mnasnet1_0",
)
# Transformers: no convolutional channels to prune, and a fixed input size.
_NOT_CNN_PREFIXES = ("vit_", "swin_", "maxvit_")
# Keyword arguments some builders need: a single logits tensor in training mode too
# (auxiliary heads return tuples), and their initialisation without a FutureWarning.
_BUILD_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


@cache
def torchvision_cnns() -> tuple[str, ...]:
    """Every torchvision classification CNN (imports torchvision)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return tuple(n for n in names if not n.startswith(_NOT_CNN_PREFIXES))


def is_torchvision_model(name: str) -> bool:
    if name in DISCOVERED:  # no torchvision import for the listed ones
        return True
    if name.startswith(_NOT_CNN_PREFIXES):
        raise ConfigError(
            f"model.arch: {name!r} is a vision transformer; channel pruning here needs a "
            "convolutional network: choose a CNN (`jst models` lists them)."
        )
    return name in torchvision_cnns()


def torchvision_factory(name: str):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        from torchvision.models import get_model

        options = _BUILD_OPTIONS.get(name, {})
        model = get_model(name, weights=None, num_classes=num_classes, **options)
        return with_input_channels(model, in_channels, name)

    return build


def with_input_channels(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """``model`` with its first RGB convolution (in module order) taking ``in_channels``."""
    if in_channels == 3:
        return model
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            if module.groups != 1:
                break
            model.set_submodule(path, conv_like(module, in_channels, module.out_channels))
            return model
    raise ConfigError(
        f"model.arch: {name!r} has no plain 3-channel first convolution to adapt to "
        f"{in_channels} input channel(s); use RGB data or another model."
    )


def min_input_size(name: str) -> int:
    """The smallest image side ``name`` classifies, from its torchvision weights' metadata
    (1 for any model that is not torchvision's)."""
    from pipeline.models.registry import is_hand_written
    from pipeline.models.user import is_user_factory

    if is_hand_written(name) or is_user_factory(name) or not is_torchvision_model(name):
        return 1
    from torchvision.models import get_model_weights

    return max(get_model_weights(name).DEFAULT.meta.get("min_size", (1, 1)))


def check_input_size(name: str, input_size: int) -> None:
    needed = min_input_size(name)
    if input_size < needed:
        raise ConfigError(
            f"model.arch: model {name!r} needs inputs of at least {needed} pixels, the data "
            f"has {input_size}; set data.image_size to {needed} or more."
        )
