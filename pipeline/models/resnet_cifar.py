"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20/32/56/110.

Three stages of 16/32/64 channels with ``n = (depth - 2) / 6`` basic blocks each.
Stage transitions use projection (option-B: 1x1 conv + BN) shortcuts.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import register_model
from pipeline.pruning.groups import ChannelLayout


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.stages = nn.ModuleList()
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            stage = nn.Sequential()
            for b in range(blocks):
                stage.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            self.stages.append(stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def channel_layout(self) -> ChannelLayout:
        layout = ChannelLayout()
        current = layout.new_group("stem", 16)
        layout.add_producer(current, "conv1", "bn1", None)
        for s, stage in enumerate(self.stages):
            current = _stage_layout(layout, f"stages.{s}", stage, current, ("conv1", "conv2"))
        layout.wire("fc", "linear", None, current)
        return layout


def _stage_layout(
    layout: ChannelLayout, prefix: str, stage: nn.Sequential, incoming: str, convs: tuple[str, ...]
) -> str:
    """Declare a residual stage; returns the group its output channels belong to.

    ``convs`` names the block's convs in order (BN names follow torchvision: conv<i> ->
    bn<i>); the last one adds onto the shortcut. Identity shortcuts extend the incoming
    coupled group; a projection shortcut starts the stage's own coupled group.
    """
    residual = incoming
    for b, block in enumerate(stage):
        name = f"{prefix}.{b}"
        projection = _projection(block)
        if projection is not None:
            residual = layout.new_group(prefix, block.get_submodule(convs[-1]).out_channels)
            conv, bn = projection
            layout.add_producer(residual, f"{name}.{conv}", f"{name}.{bn}", incoming, scored=False)
        layout.mark_coupled(residual)
        inner_in = incoming
        for i, conv in enumerate(convs[:-1], start=1):
            group = layout.new_group(f"{name}.{conv}", block.get_submodule(conv).out_channels)
            layout.add_producer(group, f"{name}.{conv}", f"{name}.bn{i}", inner_in)
            inner_in = group
        layout.add_producer(residual, f"{name}.{convs[-1]}", f"{name}.bn{len(convs)}", inner_in)
        incoming = residual
    return residual


def _projection(block: nn.Module) -> tuple[str, str] | None:
    """Names (conv, bn) of a block's projection shortcut, relative to the block."""
    for attr in ("shortcut", "downsample"):
        seq = getattr(block, attr, None)
        if seq is not None and len(seq) > 0:
            return f"{attr}.0", f"{attr}.1"
    return None


def _factory(depth: int):
    def build(*, num_classes: int, in_channels: int, input_size: int) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels)

    return build


for _depth in (20, 32, 56, 110):
    register_model(f"resnet{_depth}")(_factory(_depth))
