"""VGG-16/19 with BatchNorm, CIFAR style (global average pooling + one linear layer).

Max-pools are skipped once the feature map is 1x1, so any input size works.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model
from pipeline.pruning.groups import ChannelLayout

_CONFIGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
    + [512, 512, 512, 512],
}


class VGG(nn.Module):
    def __init__(self, config: list, num_classes: int, in_channels: int, input_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        self._conv_positions: list[int] = []
        channels, size = in_channels, input_size
        for item in config:
            if item == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            self._conv_positions.append(len(layers))
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item)]
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def channel_layout(self) -> ChannelLayout:
        layout = ChannelLayout()
        previous = None
        for i, pos in enumerate(self._conv_positions, start=1):
            group = layout.new_group(f"conv{i}", self.features[pos].out_channels)
            layout.add_producer(group, f"features.{pos}", f"features.{pos + 1}", previous)
            previous = group
        layout.wire("fc", "linear", None, previous)
        return layout


def _factory(config):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> VGG:
        return VGG(config, num_classes, in_channels, input_size)

    return build


for _name, _config in _CONFIGS.items():
    register_model(_name)(_factory(_config))
