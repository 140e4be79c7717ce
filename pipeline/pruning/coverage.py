"""How much of a model pruning reaches: the prunable share of its conv channels.

A conv's output channels are prunable when its layout wires them to a channel group (not
left whole); hidden linear features (classifier heads, ConvNeXt's MLP) are counted apart,
since the share the issue tracker and ``jst models`` report is over conv channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.pruning.groups import ChannelLayout

# The input shape coverage is measured at (small: discovery runs on the meta device).
COVERAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class Coverage:
    conv_channels: int
    prunable_conv_channels: int
    prunable_linear_features: int

    @property
    def conv_share(self) -> float:
        return self.prunable_conv_channels / self.conv_channels if self.conv_channels else 0.0

    def describe(self) -> str:
        text = f"{self.conv_share:.2f} of conv channels prunable"
        if self.prunable_linear_features:
            text += f", {self.prunable_linear_features} hidden linear features"
        return text


def layout_coverage(model: nn.Module, layout: ChannelLayout) -> Coverage:
    """The conv channels and hidden linear features of ``model`` that ``layout`` prunes."""
    grouped = {w.module for w in layout.layers if w.out_group is not None}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return Coverage(
        conv_channels=sum(m.out_channels for _, m in convs),
        prunable_conv_channels=sum(m.out_channels for n, m in convs if n in grouped),
        prunable_linear_features=sum(m.out_features for n, m in linears if n in grouped),
    )


def model_coverage(name: str, input_shape=COVERAGE_SHAPE, num_classes: int = 10) -> Coverage:
    """The coverage of registered or torchvision model ``name``, built on the meta device
    (nothing is allocated) at ``input_shape``, or at the smallest size it accepts."""
    from pipeline.models import build_on_meta, create_model
    from pipeline.models.torchvision_zoo import min_input_size
    from pipeline.pruning.discovery import model_layout

    channels, side, _ = input_shape
    side = max(side, min_input_size(name))
    model = build_on_meta(
        lambda: create_model(name, num_classes=num_classes, in_channels=channels, input_size=side)
    )
    return layout_coverage(model, model_layout(model, (channels, side, side)))


def catalogue_lines(rows: list[tuple[str, str]], verified: set[str]) -> list[str]:
    """``jst models``' lines: each model's name, how its layout is known and, for the
    ``verified`` ones, its coverage at ``COVERAGE_SHAPE`` (with a legend; without any, a
    hint at the option that shows it)."""
    width = max(len(name) for name, _ in rows) + 2
    kind_width = max(len(kind) for _, kind in rows) + 2
    lines = []
    for name, kind in rows:
        reach = model_coverage(name).describe() if name in verified else ""
        lines.append(f"{name:<{width}}{kind:<{kind_width}}{reach}".rstrip())
    shape = "x".join(map(str, COVERAGE_SHAPE))
    if verified:
        lines.append(
            f"\nprunable: the share of conv output channels in channel groups at {shape}, "
            "and the hidden linear features (classifier heads, MLPs) that prune; "
            "docs/discovery.md says why the rest stay whole"
        )
    else:
        lines.append(
            "\n(jst models --coverage: the share of each model's conv channels that prunes)"
        )
    return lines
