"""torchvision's ResNet-18/34/50 for ImageNet-size inputs, with their channel layout."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

from pipeline.models.registry import register_model
from pipeline.models.resnet_cifar import _stage_layout
from pipeline.pruning.groups import ChannelLayout


class TorchvisionResNet(resnet.ResNet):
    """torchvision's ResNet, any input channel count, plus ``channel_layout()``."""

    def __init__(self, block, layers, num_classes: int, in_channels: int):
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


_CONFIGS = {
    "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (resnet.Bottleneck, [3, 4, 6, 3]),
}


def _factory(block, layers):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> TorchvisionResNet:
        return TorchvisionResNet(block, layers, num_classes, in_channels)

    return build


for _name, (_block, _layers) in _CONFIGS.items():
    register_model(_name)(_factory(_block, _layers))
