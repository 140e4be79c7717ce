"""torchvision's ResNet-18/34/50 for ImageNet-size inputs, with their channel layout.

torchvision is imported when one of these models is built, not when the registry loads:
its import pulls in ``torch._dynamo`` and costs seconds, which every stage process paid
even for the CIFAR models.
"""

from __future__ import annotations

import functools

from torch import nn

from pipeline.models.registry import register_model
from pipeline.models.resnet_cifar import _stage_layout
from pipeline.pruning.groups import ChannelLayout

_CONFIGS = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
}


@functools.cache
def torchvision_resnet_class() -> type[nn.Module]:
    """torchvision's ResNet, any input channel count, plus ``channel_layout()``."""
    from torchvision.models import resnet

    class TorchvisionResNet(resnet.ResNet):
        def __init__(self, block_name: str, layers, num_classes: int, in_channels: int):
            block = getattr(resnet, block_name)
            super().__init__(block, layers, num_classes=num_classes)
            if in_channels != 3:
                self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self._convs = (
                ("conv1", "conv2", "conv3") if block is resnet.Bottleneck else ("conv1", "conv2")
            )

        def channel_layout(self) -> ChannelLayout:
            layout = ChannelLayout()
            current = layout.new_group("stem", 64)
            layout.add_producer(current, "conv1", "bn1", None)
            for i in range(1, 5):
                name = f"layer{i}"
                current = _stage_layout(layout, name, getattr(self, name), current, self._convs)
            layout.wire("fc", "linear", None, current)
            return layout

    return TorchvisionResNet


def _factory(block_name: str, layers: list[int]):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        return torchvision_resnet_class()(block_name, layers, num_classes, in_channels)

    return build


for _name, (_block, _layers) in _CONFIGS.items():
    register_model(_name)(_factory(_block, _layers))
