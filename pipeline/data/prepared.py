"""In-memory prepared data: the three splits, their classes and the train statistics.

Images stay uint8 (N x C x H x W) until a batch is drawn; ``normalize`` turns them into
float32 with the per-channel mean/std of the train split, computed on images scaled to
[0, 1].
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

SPLIT_NAMES = ("train", "val", "test")

# Guards the division in ``normalize`` for a channel that is constant in the train split.
_MIN_STD = 1e-6
# Images per chunk when computing statistics, to bound float64 temporaries.
_STATS_CHUNK = 4096


@dataclass(frozen=True)
class Split:
    """One split, kept in memory: uint8 images (N x C x H x W) and int64 labels (N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Split.images must be a uint8 N x C x H x W tensor, got "
                f"{self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"Split.labels must be a 1-D int64 tensor, got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"Split has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.images.shape[1:])

    @property
    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels).tolist()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in order, as uint8 images and int64 labels."""
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images."""
        return self.images[:count]

    def fingerprint(self) -> bytes:
        """Changes when any image or label changes."""
        return hashlib.sha256(
            self.images.numpy().tobytes() + self.labels.numpy().tobytes()
        ).digest()


class ImageSplit(Protocol):
    """What every consumer of a split relies on: ``Split`` (in memory) and
    ``ShardedSplit`` (streamed from shards, ``pipeline.data.streaming``)."""

    def __len__(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    @property
    def class_counts(self) -> list[int]: ...

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def head(self, count: int) -> torch.Tensor: ...

    def fingerprint(self) -> bytes: ...


@dataclass(frozen=True)
class PreparedData:
    """Train/val/test splits sharing one image shape, with the train statistics."""

    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    classes: list[str]
    mean: list[float]
    std: list[float]
    dataset: str = "unknown"

    def __post_init__(self) -> None:
        shapes = {name: self.split(name).image_shape for name in SPLIT_NAMES}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"splits have different image shapes: {shapes}")
        channels = shapes["train"][0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"mean/std need one value per channel ({channels}), got "
                f"{len(self.mean)} and {len(self.std)}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def streamed(self) -> bool:
        """Whether the splits stream from shards rather than sit in memory."""
        return not isinstance(self.train, Split)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> ImageSplit:
        """The split called ``name`` (train, val or test)."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, name)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images scaled to [0, 1]."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = max(images.numel() // max(channels, 1), 1)
    mean = total / count
    # float64 sums keep E[x^2] - E[x]^2 accurate enough; clamp tiny negative round-off.
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (... x C x H x W) to float32 ``(x / 255 - mean) / std`` per channel."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
    shape = (-1, 1, 1)  # broadcasts over the channel axis (third from last)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    scaled = images.to(torch.float32).div_(255.0)
    return scaled.sub_(mean_t).div_(std_t.clamp_min(_MIN_STD))


def describe(data: PreparedData) -> dict:
    """JSON-serialisable summary: shape, classes, split sizes, class counts, mean/std."""
    return {
        "dataset": data.dataset,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "sizes": {name: len(data.split(name)) for name in SPLIT_NAMES},
        "class_counts": {
            name: _class_counts(data.split(name), data.classes) for name in SPLIT_NAMES
        },
        "mean": [float(value) for value in data.mean],
        "std": [float(value) for value in data.std],
    }


def _class_counts(split: ImageSplit, classes: list[str]) -> dict[str, int]:
    counts = list(split.class_counts) + [0] * len(classes)
    return {name: int(count) for name, count in zip(classes, counts, strict=False)}
